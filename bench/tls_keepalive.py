#!/usr/bin/env python3
"""Keep-alive HTTPS check-ins from PROCS processes (one connection each) for SECS seconds:
with a device token (`token`) or with a client certificate (`cert`), so that both are
measured with the same client. Prints the total rate (req/s) and the count of non-200 answers.

    tls_keepalive.py PORT CA_PEM MODE SECS PROCS DEVICES [CERT KEY]

MODE `token`: random devices' tokens (upd_dev_bench_<i>, i in 1..DEVICES); `cert`: the one
device that CERT names, no Authorization header.
"""
import http.client
import multiprocessing
import random
import ssl
import sys
import time


def worker(args):
    port, ca, mode, secs, devices, cert, key = args
    context = ssl.create_default_context(cafile=ca)
    if mode == "cert":
        context.load_cert_chain(cert, key)
    conn = http.client.HTTPSConnection("localhost", port, context=context)
    done = bad = 0
    end = time.monotonic() + secs
    while time.monotonic() < end:
        headers = {}
        if mode == "token":
            headers["Authorization"] = f"Bearer upd_dev_bench_{random.randint(1, devices)}"
        conn.request("GET", "/api/v1/device/checkin?version=1.0.0", headers=headers)
        response = conn.getresponse()
        response.read()
        done += 1
        bad += response.status != 200
    return done, bad


def main():
    port, ca, mode, secs, procs, devices = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    cert, key = (sys.argv[7], sys.argv[8]) if len(sys.argv) > 8 else (None, None)
    with multiprocessing.Pool(procs) as pool:
        results = pool.map(worker, [(int(port), ca, mode, secs, devices, cert, key)] * procs)
    done = sum(r[0] for r in results)
    bad = sum(r[1] for r in results)
    print(f"{done / secs:.0f} {bad}")


if __name__ == "__main__":
    main()
