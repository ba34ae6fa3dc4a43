#!/usr/bin/env python3
"""Starts `updraft serve` once and measures the time from exec to the first 200 of /api/ready.

Polls 127.0.0.1:PORT every 5 ms (a fresh connection per attempt), then waits IDLE seconds and
reads the server's VmRSS. The server is always stopped (TERM, then KILL after 10 s).
Prints one JSON line: {"ready_ms": .., "attempts": .., "idle_rss_kb": .., ...}.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time


def proc_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def ready_status(port):
    """The HTTP status of GET /api/ready, or None when nothing answers yet."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(f"GET /api/ready HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n" not in data:
                chunk = s.recv(1024)
                if not chunk:
                    break
                data += chunk
            line = data.split(b"\r\n", 1)[0].split()
            return int(line[1]) if len(line) >= 2 else None
    except OSError:
        return None


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bin", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--log", required=True, help="file for the server's output")
    p.add_argument("--interval", type=float, default=0.005)
    p.add_argument("--idle", type=float, default=2.0, help="seconds after ready before reading VmRSS")
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.startswith("UPDRAFT_")}
    env.update(UPDRAFT_ADMIN_API_KEY=args.key, UPDRAFT_LOG="warn")
    cmd = [args.bin, "serve", "--listen", f"127.0.0.1:{args.port}", "--data-dir", args.data_dir]
    out = open(args.log, "wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=os.path.dirname(os.path.abspath(args.data_dir)), stdout=out, stderr=subprocess.STDOUT, close_fds=True)
    report = {"pid": proc.pid}
    try:
        attempts = 0
        first_answer_ms = None
        while True:
            attempts += 1
            status = ready_status(args.port)
            elapsed = time.monotonic() - t0
            if status is not None and first_answer_ms is None:
                first_answer_ms = round(1000 * elapsed, 1)
            if status == 200:
                break
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with {proc.returncode} before it was ready; see {args.log}")
            if elapsed > args.timeout:
                raise SystemExit(f"not ready after {args.timeout} s")
            time.sleep(args.interval)
        report["ready_ms"] = round(1000 * elapsed, 1)
        report["first_answer_ms"] = first_answer_ms
        report["attempts"] = attempts
        report["rss_kb_at_ready"] = proc_kb(proc.pid, "VmRSS")
        time.sleep(args.idle)
        report["idle_rss_kb"] = proc_kb(proc.pid, "VmRSS")
        report["idle_hwm_kb"] = proc_kb(proc.pid, "VmHWM")
        report["threads"] = proc_kb(proc.pid, "Threads")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        out.close()
    report["exit_code"] = proc.returncode
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
