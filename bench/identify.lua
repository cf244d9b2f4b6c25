-- wrk script: POST /identify bodies for one workload against a seeded database.
--
-- wrk -t2 -c8 -d10s -s bench/identify.lua URL -- WORKLOAD FULL_CLUSTERS RUN PAIR_LO PAIR_HI THREADS
--
-- Requests go to POST /identify, or to the path of URL when it has one (the
-- references of bench/reference.py serve /select and /insert).
-- WORKLOAD is lookup, secondary, primary, merge, mix, customers_lookup (the
-- lookup bodies sent to POST /customers/lookup), history (GET the history of
-- a seeded 5-row customer, whose 5 events the migration wrote), detach (POST
-- /customers/{id}/detach of a 5-row customer's middle phone, which splits it
-- in two) or erase (DELETE /customers/{id} of a 5-row customer). FULL_CLUSTERS
-- is the number of complete seeded clusters (bench/seed.py; the identifiers below
-- must match the ones it writes). RUN numbers this run among all runs against
-- the same seeded database (0 to 999), so brand-new identifiers never repeat. Merges use
-- the cluster pairs (2p, 2p + 1) for p in [PAIR_LO, PAIR_HI); detach and erase
-- use the 5-row customers m (the clusters 5m + 4) for m in [PAIR_LO, PAIR_HI),
-- each once. The span is split between the THREADS wrk threads; a thread that
-- has used up its part stops early, and done() then reports the rate over the
-- time the threads were really sending.
--
-- done() prints one line: "RESULT " followed by a JSON object.

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_usec; } bench_timeval;
int gettimeofday(bench_timeval *tv, void *tz);
]])

local PHONE_BASE = 10000000000
local HEADERS = { ["Content-Type"] = "application/json" }

local function now_us()
  local tv = ffi.new("bench_timeval")
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) * 1000000 + tonumber(tv.tv_usec)
end

-- Runs in the main Lua state: hand each thread its id and slice of pairs.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

-- Each thread's own Lua state. The tallies are globals because done() reads
-- them through thread:get(), which sees only globals.
local workload, full_clusters, run, pair_next, pair_end, counter, path

function init(args)
  workload = args[1]
  local default = workload == "customers_lookup" and "/customers/lookup" or "/identify"
  path = (wrk.path ~= nil and wrk.path ~= "" and wrk.path ~= "/") and wrk.path or default
  full_clusters = tonumber(args[2])
  run = tonumber(args[3])
  local pair_lo, pair_hi = tonumber(args[4]), tonumber(args[5])
  local share = math.floor((pair_hi - pair_lo) / tonumber(args[6]))
  pair_next = pair_lo + (thread_id - 1) * share
  pair_end = pair_next + share
  counter = 0
  bad_status, fallbacks, stopped = 0, 0, 0
  math.randomseed(run * 1000 + thread_id)
end

local function cluster_size(k)
  return 1 + k % 5
end

local function seeded_email(k, j)
  return string.format("c%de%d@seed.example.com", k, math.floor((j + 1) / 2))
end

local function seeded_phone(k, j)
  return string.format("%d", PHONE_BASE + 3 * k + math.floor(j / 2))
end

-- A 13-digit phone and an email that no other thread or run of this database uses.
local function fresh()
  counter = counter + 1
  local phone = string.format("2%03d%02d%07d", run % 1000, thread_id, counter)
  return string.format("r%dt%dn%d@new.example.com", run, thread_id, counter), phone
end

local function body(email, phone)
  return string.format('{"email":"%s","phoneNumber":"%s"}', email, phone)
end

local function lookup()
  local k = math.random(0, full_clusters - 1)
  local j = math.random(0, cluster_size(k) - 1)
  return body(seeded_email(k, j), seeded_phone(k, j))
end

local function new_secondary()
  local k = math.random(0, full_clusters - 1)
  local email = fresh()
  return body(email, seeded_phone(k, math.random(0, cluster_size(k) - 1)))
end

local function new_primary()
  return body(fresh())
end

-- The next unused pair (or 5-row customer) of this thread's part, or nil.
local function next_in_span()
  if pair_next >= pair_end then
    return nil
  end
  local p = pair_next
  pair_next = pair_next + 1
  return p
end

local function merge()
  local p = next_in_span()
  if p == nil then
    return nil
  end
  return body(seeded_email(2 * p, 0), seeded_phone(2 * p + 1, 0))
end

local function mixed()
  local r = math.random()
  if r < 0.80 then
    return lookup()
  elseif r < 0.95 then
    return new_secondary()
  elseif r < 0.99 then
    return new_primary()
  end
  local merging = merge()
  if merging == nil then
    fallbacks = fallbacks + 1
    return lookup()
  end
  return merging
end

local bodies = {
  lookup = lookup,
  secondary = new_secondary,
  primary = new_primary,
  merge = merge,
  mix = mixed,
  customers_lookup = lookup,
}

-- Cluster k = 5m + 4 has 5 rows; 15 rows precede each group of five clusters,
-- and 10 the fifth cluster within its group, so its primary's id is 15m + 11.
local function five_row_primary(m)
  return 15 * m + 11
end

local function history()
  local m = math.random(0, math.floor(full_clusters / 5) - 1)
  return wrk.format("GET", string.format("/customers/%d/history", five_row_primary(m)))
end

-- Its rows 2 and 3 share the phone of j = 2, the only link between rows 0-2
-- and rows 3-4: without it the customer becomes two (3 rows and 2).
local function detach(m)
  local phone = seeded_phone(5 * m + 4, 2)
  return wrk.format(
    "POST",
    string.format("/customers/%d/detach", five_row_primary(m)),
    HEADERS,
    string.format('{"phoneNumber":"%s"}', phone)
  )
end

local function erase(m)
  return wrk.format("DELETE", string.format("/customers/%d", five_row_primary(m)))
end

local corrections = { detach = detach, erase = erase }

function request()
  if first_us == nil then
    first_us = now_us()
  end
  if workload == "history" then
    return history()
  end
  if corrections[workload] ~= nil then
    local m = next_in_span()
    if m == nil then
      -- Every customer of this thread's part is used: stop, as merges do.
      stopped = 1
      wrk.thread:stop()
      return history()
    end
    return corrections[workload](m)
  end
  local payload = bodies[workload]()
  if payload == nil then
    -- Out of unmerged pairs: stop this thread; the body below is never counted.
    stopped = 1
    wrk.thread:stop()
    payload = lookup()
  end
  return wrk.format("POST", path, HEADERS, payload)
end

function response(status, headers, body)
  last_us = now_us()
  if status < 200 or status > 299 then
    bad_status = bad_status + 1
  end
end

function done(summary, latency, requests)
  local first, last, bad, stops, falls = math.huge, 0, 0, 0, 0
  for _, thread in ipairs(threads) do
    first = math.min(first, thread:get("first_us") or math.huge)
    last = math.max(last, thread:get("last_us") or 0)
    bad = bad + thread:get("bad_status")
    stops = stops + thread:get("stopped")
    falls = falls + thread:get("fallbacks")
  end
  local seconds = summary.duration / 1e6
  if stops > 0 and last > first then
    seconds = (last - first) / 1e6
  end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"seconds":%.3f,"rps":%.1f,"p50_ms":%.3f,"p99_ms":%.3f,'
      .. '"non_2xx":%d,"socket_errors":%d,"stopped_threads":%d,"merge_fallbacks":%d}\n',
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    math.max(bad, e.status), e.connect + e.read + e.write + e.timeout, stops, falls
  ))
end
