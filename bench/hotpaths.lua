-- wrk script of bench/hotpaths.sh: one request kind (BENCH_SCENARIO) for random devices
-- among BENCH_DEVICES seeded ones, numbered from BENCH_FIRST (default 1). Device i is the one
-- bench/checkin_seed.py writes: token upd_dev_bench_<i>, MAC 02:xx:xx:xx:xx:xx (i in the low
-- 40 bits).
--
--   checkin   GET /api/v1/device/checkin?version=1.0.0 with its token (native check-in)
--   seed001   GET /api/firmware?device_id=&hardware=&version=1.0.0&mac= with the djb2
--             X-Device-Auth token of its MAC and BENCH_SECRET (the seed-001 check-in)
--   seed003   GET /api/configs/<mac>.json, no credential (seed 003's device document)
--   seed003-token  the same with X-Device-Token: <its token>
--
-- Any status but 200 is counted by wrk ("Non-2xx or 3xx responses") and the first few are
-- printed to stderr.
local scenario = os.getenv("BENCH_SCENARIO") or "checkin"
local devices = tonumber(os.getenv("BENCH_DEVICES") or "1000")
local first = tonumber(os.getenv("BENCH_FIRST") or "1")
local secret = os.getenv("BENCH_SECRET") or ""
local thread_count = 0
local bad = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_id", thread_count)
end

function init(args)
  math.randomseed(os.time() * 1000 + (thread_id or 0) * 7919)
end

-- The five low bytes of the MAC of device i, as two-digit hex strings.
local function mac_bytes(i)
  local out = {}
  for k = 4, 0, -1 do
    out[#out + 1] = string.format("%02X", math.floor(i / 2 ^ (8 * k)) % 256)
  end
  return out
end

-- djb2 from 0 (the seed-001 firmware's variant), wrapping at 32 bits.
local function djb2(text)
  local h = 0
  for k = 1, #text do
    h = (h * 33 + text:byte(k)) % 4294967296
  end
  return h
end

local function hex32(n)
  local digits, out = "0123456789abcdef", ""
  for _ = 1, 8 do
    local d = n % 16
    out = digits:sub(d + 1, d + 1) .. out
    n = math.floor(n / 16)
  end
  return out
end

function request()
  local i = math.random(first, first + devices - 1)
  if scenario == "checkin" then
    return wrk.format("GET", "/api/v1/device/checkin?version=1.0.0", { ["Authorization"] = "Bearer upd_dev_bench_" .. i })
  end
  local b = mac_bytes(i)
  if scenario == "seed001" then
    local mac = "02:" .. table.concat(b, ":")
    local token = hex32(djb2("02" .. table.concat(b) .. secret))
    local path = "/api/firmware?device_id=bench-" .. i .. "&hardware=esp32&version=1.0.0&mac=" .. mac
    return wrk.format("GET", path, { ["X-Device-Auth"] = token })
  end
  local path = "/api/configs/02-" .. string.lower(table.concat(b, "-")) .. ".json"
  if scenario == "seed003-token" then
    return wrk.format("GET", path, { ["X-Device-Token"] = "upd_dev_bench_" .. i })
  end
  return wrk.format("GET", path)
end

function response(status, headers, body)
  if status ~= 200 and bad < 5 then
    bad = bad + 1
    io.stderr:write("unexpected status " .. status .. ": " .. string.sub(body or "", 1, 200) .. "\n")
  end
end
