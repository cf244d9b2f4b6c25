-- wrk script: POST /identify into one large seeded cluster (bench/run.py's
-- cluster-size series), whose every row holds the phone CLUSTER_PHONE.
--
-- wrk -t1 -c8 -d10s -s bench/cluster.lua URL -- WORKLOAD RUN
--
-- WORKLOAD is lookup (the shared phone alone: answered with the whole
-- cluster, inserts nothing) or secondary (a brand-new email with the shared
-- phone: inserts a secondary into the cluster). RUN numbers this run among
-- all runs against the same seeded database, so new emails never repeat.
-- done() prints one line: "RESULT " followed by a JSON object.

local CLUSTER_PHONE = "19990000000"
local HEADERS = { ["Content-Type"] = "application/json" }
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

local workload, run, counter

function init(args)
  workload = args[1]
  run = tonumber(args[2])
  counter = 0
  bad_status = 0
end

function request()
  local email = "null"
  if workload == "secondary" then
    counter = counter + 1
    email = string.format('"r%dt%dn%d@cluster.example.com"', run, thread_id, counter)
  end
  local body = string.format('{"email":%s,"phoneNumber":"%s"}', email, CLUSTER_PHONE)
  return wrk.format("POST", "/identify", HEADERS, body)
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
