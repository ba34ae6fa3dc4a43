#!/usr/bin/env python3
"""Opens N concurrent downloads that read slowly, and samples a server's memory meanwhile.

Each client opens a raw socket to 127.0.0.1:PORT, sends one GET with the admin key, reads the
status line and headers plus READ_BYTES of the body, then stops reading and holds the
connection open for HOLD seconds (the server is left with a full socket buffer and a body
in flight). All connections are then closed. The server's VmRSS / VmHWM / Threads are
sampled from /proc/PID/status throughout. Prints a JSON report.

Only 127.0.0.1 is ever contacted; every wait has a deadline.
"""

import argparse
import asyncio
import json
import socket
import sys
import time


def proc_status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads", "VmSize"):
                fields[key] = int(value.split()[0])
    return fields


def sockstat():
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    parts = line.split()
                    return dict(zip(parts[1::2], map(int, parts[2::2])))
    except OSError:
        pass
    return {}


async def client(i, args, request, ready, release, results):
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    started = time.monotonic()
    entry = {"status": None, "error": None, "ttfb": None, "body": 0}
    results[i] = entry
    try:
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", args.port)), args.timeout)
        await asyncio.wait_for(loop.sock_sendall(sock, request), args.timeout)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), args.timeout)
            if not chunk:
                raise ConnectionError("closed before the headers ended")
            buf += chunk
            if entry["ttfb"] is None:
                entry["ttfb"] = time.monotonic() - started
        head, _, body = buf.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        entry["status"] = int(status_line.split()[1])
        got = len(body)
        while got < args.read_bytes:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, min(4096, args.read_bytes - got)), args.timeout)
            if not chunk:
                raise ConnectionError("closed during the body")
            got += len(chunk)
        entry["body"] = got
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        entry["error"] = f"{type(e).__name__}: {e}"
    finally:
        ready.release()
    try:
        await release.wait()
    finally:
        sock.close()


async def main(args):
    request = (
        f"GET {args.path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
        f"Authorization: Bearer {args.key}\r\nUser-Agent: updraft-bench-slow-client\r\n\r\n"
    ).encode()
    base = proc_status(args.pid)
    samples = [(0.0, base)]
    ready = asyncio.Semaphore(0)
    release = asyncio.Event()
    results = [None] * args.count
    t0 = time.monotonic()
    tasks = []
    for i in range(args.count):
        tasks.append(asyncio.create_task(client(i, args, request, ready, release, results)))
        if args.ramp and i % 100 == 99:
            await asyncio.sleep(0)  # let the first connects go out

    async def all_ready():
        for _ in range(args.count):
            await ready.acquire()

    async def sampler(stop):
        while not stop.is_set():
            samples.append((time.monotonic() - t0, proc_status(args.pid)))
            try:
                await asyncio.wait_for(stop.wait(), args.sample_interval)
            except asyncio.TimeoutError:
                pass

    stop_sampling = asyncio.Event()
    sampling = asyncio.create_task(sampler(stop_sampling))
    timed_out = False
    try:
        await asyncio.wait_for(all_ready(), args.timeout + 30)
    except asyncio.TimeoutError:
        timed_out = True
    all_in = time.monotonic() - t0
    sock_at_hold = sockstat()
    await asyncio.sleep(args.hold)
    at_peak = proc_status(args.pid)
    samples.append((time.monotonic() - t0, at_peak))
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    closed_at = time.monotonic() - t0
    await asyncio.sleep(args.after)
    after = proc_status(args.pid)
    samples.append((time.monotonic() - t0, after))
    stop_sampling.set()
    await sampling

    statuses = {}
    errors = []
    for r in results:
        key = str(r["status"]) if r and r["status"] is not None else "none"
        statuses[key] = statuses.get(key, 0) + 1
        if r and r["error"]:
            errors.append(r["error"])
    ttfbs = sorted(r["ttfb"] for r in results if r and r["ttfb"] is not None)
    peak_sampled = max(s["VmRSS"] for _, s in samples)
    report = {
        "count": args.count,
        "statuses": statuses,
        "ok_200": statuses.get("200", 0),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "timed_out": timed_out,
        "seconds_until_all_in": round(all_in, 3),
        "ttfb_ms_median": round(1000 * ttfbs[len(ttfbs) // 2], 1) if ttfbs else None,
        "ttfb_ms_max": round(1000 * ttfbs[-1], 1) if ttfbs else None,
        "closed_at_s": round(closed_at, 3),
        "rss_kb_before": base["VmRSS"],
        "rss_kb_peak_sampled": peak_sampled,
        "hwm_kb_at_end_of_hold": at_peak["VmHWM"],
        "rss_kb_end_of_hold": at_peak["VmRSS"],
        "rss_kb_after_close": after["VmRSS"],
        "threads_before": base["Threads"],
        "threads_peak": max(s["Threads"] for _, s in samples),
        "tcp_sockstat_during_hold": sock_at_hold,
        "samples": [(round(t, 3), s["VmRSS"], s["Threads"]) for t, s in samples],
    }
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--pid", type=int, required=True, help="server PID whose memory is sampled")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--read-bytes", type=int, default=4096, help="body bytes read before stalling")
    p.add_argument("--hold", type=float, default=5.0, help="seconds to hold the stalled connections")
    p.add_argument("--after", type=float, default=2.0, help="seconds to wait after closing before the last sample")
    p.add_argument("--timeout", type=float, default=30.0, help="deadline of each socket operation")
    p.add_argument("--sample-interval", type=float, default=0.05)
    p.add_argument("--ramp", action="store_true", help="yield every 100 connects")
    asyncio.run(main(p.parse_args()))
