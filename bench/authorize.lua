-- wrk script: POST /sessions/authorize with a unique token per request.
-- Usage: wrk ... -s bench/authorize.lua <url> -- <api key> <run id>
local threads = {}
local next_id = 0

function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  api_key = args[1]
  run_id = args[2]
  counter = 0
  headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. api_key}
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"operator_id":"bench","token":"tok-%s-%d-%d","session_ref":"bench"}', run_id, thread_id, counter)
  return wrk.format("POST", "/sessions/authorize", headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_status":%d,"errors_timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
