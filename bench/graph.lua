-- wrk script: the graph series (bench/graph_series.py). One request, sent
-- again and again: GET PATH on the service, or POST PATH with an email in
-- the body on the yardstick (bench/reference.py's one indexed SELECT).
--
-- wrk -t1 -c8 -d10s -s bench/graph.lua URL -- METHOD PATH [EMAIL]
--
-- done() prints one line: "RESULT " followed by a JSON object.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local method, path, body

function init(args)
  method = args[1]
  path = args[2]
  if args[3] then
    body = string.format('{"email":"%s"}', args[3])
  end
  bad_status = 0
end

function request()
  if body then
    return wrk.format(method, path, { ["Content-Type"] = "application/json" }, body)
  end
  return wrk.format(method, path)
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    bad_status = bad_status + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("bad_status")
  end
  local e = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    'RESULT {"requests":%d,"seconds":%.3f,"rps":%.1f,"p50_ms":%.3f,"p99_ms":%.3f,'
      .. '"non_2xx":%d,"socket_errors":%d}\n',
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    math.max(bad, e.status), e.connect + e.read + e.write + e.timeout
  ))
end
