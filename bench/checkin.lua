-- wrk script: authenticated GET check-ins of random devices among BENCH_DEVICES seeded ones
-- (token upd_dev_bench_<i>). With BENCH_RATE set, each connection paces itself so that all
-- connections together send about BENCH_RATE requests per second.
local devices = tonumber(os.getenv("BENCH_DEVICES") or "1000")
local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local connections = tonumber(os.getenv("BENCH_CONNECTIONS") or "64")
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_id", thread_count)
end

function init(args)
  math.randomseed(os.time() * 1000 + (thread_id or 0) * 7919)
end

if rate > 0 then
  function delay()
    return connections * 1000 / rate
  end
end

function request()
  local i = math.random(1, devices)
  return wrk.format("GET", "/api/v1/device/checkin?version=1.0.0", { ["Authorization"] = "Bearer upd_dev_bench_" .. i })
end

function response(status, headers, body)
  if status ~= 200 then
    io.stderr:write("unexpected status " .. status .. "\n")
  end
end
