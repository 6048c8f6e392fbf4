-- wrk script for bench/bench.py: POST one JSON body, stop after BENCH_N responses.
--
-- Env: BENCH_BODY (JSON text), BENCH_KEY (bearer token), BENCH_N (responses to collect).
-- wrk's main thread sleeps for the whole -d duration even when every thread has stopped, so this
-- script prints "__DONE__" when it has its responses and the harness then sends SIGINT, which makes
-- wrk report at once. The report is one "__RESULT__ {json}" line (latencies in microseconds).

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")

local limit = tonumber(os.getenv("BENCH_N"))
local seen = 0
local finished = false
local threads = {}
-- Globals, so that done() (which runs in the main Lua state) can read them with thread:get().
bad = 0
first_bad = 0

function setup(thread)
  table.insert(threads, thread)
end

function response(status, headers, body)
  seen = seen + 1
  if status ~= 200 then
    bad = bad + 1
    if first_bad == 0 then first_bad = status end
  end
  if seen >= limit and not finished then
    finished = true
    io.write("__DONE__\n")
    io.flush()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local nbad, first = 0, 0
  for _, t in ipairs(threads) do
    nbad = nbad + t:get("bad")
    if first == 0 then first = t:get("first_bad") end
  end
  io.write(string.format(
    '__RESULT__ {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,'
      .. '"non200":%d,"first_bad_status":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    nbad, first, e.connect + e.read + e.write + e.timeout))
  io.flush()
end
