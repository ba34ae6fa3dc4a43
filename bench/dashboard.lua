-- wrk script of bench/dashboard.sh: one admin request (BENCH_PATH, BENCH_METHOD, BENCH_BODY)
-- with the admin key (BENCH_KEY), and at the end one line with its latency percentiles in ms:
--   dashboard p50=.. p95=.. p99=.. max=.. requests=.. non2xx=..
-- Any status but 200 is counted and the first few answers are printed to stderr.
local path = os.getenv("BENCH_PATH") or "/api/v1/devices"
local method = os.getenv("BENCH_METHOD") or "GET"
local body = os.getenv("BENCH_BODY")
local key = os.getenv("BENCH_KEY") or ""
local bad = 0

function init(args)
  wrk.method = method
  wrk.path = path
  wrk.headers["Authorization"] = "Bearer " .. key
  if body and body ~= "" then
    wrk.body = body
    wrk.headers["Content-Type"] = "application/json"
  end
end

function response(status, headers, answer)
  if status ~= 200 then
    bad = bad + 1
    if bad <= 3 then
      io.stderr:write("status " .. status .. " for " .. method .. " " .. path .. ": " .. string.sub(answer or "", 1, 300) .. "\n")
    end
  end
end

function done(summary, latency, requests)
  local ms = function(us) return string.format("%.1f", us / 1000) end
  io.write(string.format("dashboard p50=%s p95=%s p99=%s max=%s requests=%d non2xx=%d\n",
    ms(latency:percentile(50)), ms(latency:percentile(95)), ms(latency:percentile(99)), ms(latency.max),
    summary.requests, summary.errors.status))
end
