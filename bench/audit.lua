-- wrk script of bench/audit.sh: an admin request with the bench key (BENCH_KEY).
--
--   get    GET /api/v1/mqtt (an admin read: not audited)
--   patch  PATCH /api/v1/devices/<BENCH_DEVICE_ID> with a new owner each time (an audited
--          write)
--
-- Any status but 200 is counted by wrk ("Non-2xx or 3xx responses").
local scenario = os.getenv("BENCH_SCENARIO") or "get"
local key = os.getenv("BENCH_KEY") or ""
local device = os.getenv("BENCH_DEVICE_ID") or ""
local n = 0

function request()
  if scenario == "patch" then
    n = n + 1
    return wrk.format("PATCH", "/api/v1/devices/" .. device,
      { ["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json" },
      '{"owner":"bench-' .. n .. '"}')
  end
  return wrk.format("GET", "/api/v1/mqtt", { ["Authorization"] = "Bearer " .. key })
end
