-- wrk script: POST /identify with the lines of a file, in the file's order
-- (the import series, bench/imports.py: an order history's lines, sorted as
-- the import applies them, one JSON body a line).
--
-- wrk -t1 -c8 -d10s -s bench/lines.lua URL -- BODIES FIRST THREADS
--
-- Lines are numbered from 0. Thread t of THREADS sends lines FIRST + t - 1,
-- FIRST + t - 1 + THREADS, and so on, each once; a thread that reaches the end
-- of the file stops, and done() then reports the rate over the time the
-- threads were really sending. next_line in the result is the line after the
-- last one handed out, where a following run carries on: no line is sent
-- twice. Lines handed out whose answers came after wrk stopped were served
-- but are not counted, as in every wrk run.
--
-- done() prints one line: "RESULT " followed by a JSON object.

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_usec; } bench_timeval;
int gettimeofday(bench_timeval *tv, void *tz);
]])

local HEADERS = { ["Content-Type"] = "application/json" }

local function now_us()
  local tv = ffi.new("bench_timeval")
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000000 + tonumber(tv.tv_usec)
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

-- Each thread's own Lua state; done() reads the globals through thread:get().
local bodies, stride, upcoming, verified

function init(args)
  bodies = assert(io.open(args[1]))
  stride = tonumber(args[3])
  next_line = tonumber(args[2])
  upcoming = next_line + thread_id - 1
  for _ = 1, upcoming do
    bodies:read("*l")
  end
  bad_status, stopped = 0, 0
  -- wrk calls the first thread's request() once to check it, and sends nothing.
  verified = thread_id ~= 1
end

-- The next line of this thread's share, or nil at the end of the file.
local function next_body()
  local body = bodies:read("*l")
  if body == nil then
    return nil
  end
  next_line = upcoming + 1
  upcoming = upcoming + stride
  for _ = 2, stride do
    if bodies:read("*l") == nil then
      break
    end
  end
  return body
end

-- What is sent once the file is used up: wrk still writes the request that
-- request() returns after stopping, which must change nothing.
local function harmless()
  return wrk.format("GET", "/health")
end

function request()
  if not verified then
    verified = true
    return harmless()
  end
  if first_us == nil then
    first_us = now_us()
  end
  local body = next_body()
  if body == nil then
    stopped = 1
    wrk.thread:stop()
    return harmless()
  end
  return wrk.format("POST", "/identify", HEADERS, body)
end

function response(status, headers, body)
  last_us = now_us()
  if status < 200 or status > 299 then
    bad_status = bad_status + 1
  end
end

function done(summary, latency, requests)
  local first, last, bad, stops, after = math.huge, 0, 0, 0, 0
  for _, thread in ipairs(threads) do
    first = math.min(first, thread:get("first_us") or math.huge)
    last = math.max(last, thread:get("last_us") or 0)
    bad = bad + thread:get("bad_status")
    stops = stops + thread:get("stopped")
    after = math.max(after, thread:get("next_line"))
  end
  local seconds = summary.duration / 1e6
  if stops > 0 and last > first then
    seconds = (last - first) / 1e6
  end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"seconds":%.3f,"rps":%.1f,"p50_ms":%.3f,"p99_ms":%.3f,'
      .. '"non_2xx":%d,"socket_errors":%d,"next_line":%d}\n',
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    math.max(bad, e.status), e.connect + e.read + e.write + e.timeout, after
  ))
end
