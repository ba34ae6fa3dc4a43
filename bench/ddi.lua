-- wrk script: hawkBit DDI polls (GET /{tenant}/controller/v1/{controllerId}) of random devices.
--   BENCH_DEVICES  how many devices (1..N)
--   BENCH_ID       "mac": the controller id is device i's MAC as bench/checkin_seed.py makes it
--                  (02:xx:xx:xx:xx:xx) and the token upd_dev_bench_<i> (Updraft);
--                  "name": the controller id is bench-<i> and the token gb-token-<i> (gooseBit)
local devices = tonumber(os.getenv("BENCH_DEVICES") or "1000")
local id_kind = os.getenv("BENCH_ID") or "mac"
local tenant = os.getenv("BENCH_TENANT") or "DEFAULT"
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_id", thread_count)
end

function init(args)
  math.randomseed(os.time() * 1000 + (thread_id or 0) * 7919)
end

local function mac(i)
  local parts = { "02" }
  for _, shift in ipairs({ 32, 24, 16, 8, 0 }) do
    parts[#parts + 1] = string.format("%02X", math.floor(i / 2 ^ shift) % 256)
  end
  return table.concat(parts, ":")
end

function request()
  local i = math.random(1, devices)
  local id, token
  if id_kind == "mac" then
    id, token = mac(i), "upd_dev_bench_" .. i
  else
    id, token = "bench-" .. i, "gb-token-" .. i
  end
  return wrk.format("GET", "/" .. tenant .. "/controller/v1/" .. id,
    { ["Authorization"] = "TargetToken " .. token, ["Accept"] = "application/json" })
end

function response(status, headers, body)
  if status ~= 200 then
    io.stderr:write("unexpected status " .. status .. "\n")
  end
end
