-- wrk script of bench/auth.sh: password logins (POST /api/v1/session) of BENCH_USER.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = string.format('{"username":"%s","password":"%s"}', os.getenv("BENCH_USER") or "bench", os.getenv("BENCH_PASSWORD") or "")
