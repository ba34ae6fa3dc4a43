#!/usr/bin/env python3
"""Memory of LVGL image conversion under decompression bombs and large images (issue 12, item 8).

Starts `updraft serve` (the binary given, on a free 127.0.0.1 port, fresh temp data dir, MQTT
off) and a small image server on 127.0.0.1, then for each scenario sends N concurrent
requests, samples the server's VmRSS every 10 ms while they run, and reads it again 2 s and
10 s after the last answer. Prints one table; exits 0 whatever the figures (a benchmark, not
a test).

  python3 bench/image_memory.py --bin target/release/updraft
  python3 bench/image_memory.py --bin /path/to/older/updraft --label before

Scenarios:
  bomb-proxy   N x GET /api/images/lvgl?url=<8192x8192 RGBA PNG of 261 KB>   (public route)
  bomb-admin   N x POST /api/v1/images/lvgl with the same PNG as the body     (admin route)
  photo-proxy  N x GET /api/images/lvgl?url=<4000x3000 RGB PNG>&width=320     (legitimate, 12 MP)
Only the Python standard library is used; the images are made here (zlib), nothing is fetched.
"""
import argparse
import http.server
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib

KEY = "bench-admin-key-0123456789abcdef"


def png(width, height, colour_type, rows):
    """A PNG from an iterator of raw scanlines (filter byte included), compressed as it goes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row) for row in rows]
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def bomb():
    row = bytes(1 + 8192 * 4)  # filter 0, transparent black RGBA
    return png(8192, 8192, 6, (row for _ in range(8192)))


def photo():
    # A smooth gradient with a little structure: 4000x3000 RGB, filter "Sub" rows.
    def rows():
        for y in range(3000):
            line = bytearray([1])  # Sub: each byte is the difference to the pixel on the left
            line += bytes([(y * 7) % 256, (y * 3) % 256, 255 - y % 256])
            line += bytes([1, 0, 255]) * 3999
            yield bytes(line)
    return png(4000, 3000, 2, rows())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def serve_images(files):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path.lstrip("/"))
            if body is None:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def request(url, data=None, admin=False):
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if admin:
        req.add_header("X-Admin-API-Key", KEY)
        req.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(req, timeout=300) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        error.read()
        return error.code
    except Exception as error:  # the server died, timed out, ...
        return f"{type(error).__name__}"


def scenario(pid, n, make_request):
    statuses = [None] * n
    def run(i):
        statuses[i] = make_request()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    before = rss_kib(pid)
    peak = before
    start = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_kib(pid))
        time.sleep(0.01)
    seconds = time.monotonic() - start
    peak = max(peak, rss_kib(pid))
    time.sleep(2)
    after_2s = rss_kib(pid)
    time.sleep(8)
    after_10s = rss_kib(pid)
    counts = {}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    return {"before": before, "peak": peak, "after_2s": after_2s, "after_10s": after_10s, "seconds": seconds,
            "statuses": " ".join(f"{k}x{v}" for k, v in sorted(counts.items(), key=str))}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True)
    parser.add_argument("--label", default="")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--env", action="append", default=[], help="extra NAME=VALUE for the server")
    args = parser.parse_args()

    files = {"bomb.png": bomb(), "photo.png": photo()}
    images = serve_images(files)
    image_base = f"http://127.0.0.1:{images.server_address[1]}"
    tmp = tempfile.mkdtemp(prefix="updraft-bench-images.")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPDRAFT_")}
    env.update({
        "UPDRAFT_LISTEN": f"127.0.0.1:{port}",
        "UPDRAFT_DATA_DIR": f"{tmp}/data",
        "UPDRAFT_ADMIN_API_KEY": KEY,
        "UPDRAFT_MQTT_ENABLED": "false",
        "UPDRAFT_IMAGE_FETCH_ALLOW_HOSTS": "127.0.0.1",
        "UPDRAFT_LOG": "warn",
    })
    for pair in args.env:
        name, _, value = pair.partition("=")
        env[name] = value
    log = open(f"{tmp}/server.log", "w")
    server = subprocess.Popen([args.bin, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if request(f"{base}/api/ready") == 200:
                    break
            except Exception:
                pass
            time.sleep(0.05)
        time.sleep(1)
        idle = rss_kib(server.pid)
        n = args.concurrency
        results = {
            "bomb-proxy": scenario(server.pid, n, lambda: request(f"{base}/api/images/lvgl?url={image_base}/bomb.png")),
            "bomb-admin": scenario(server.pid, n, lambda: request(f"{base}/api/v1/images/lvgl?width=64", files["bomb.png"], admin=True)),
            "photo-proxy": scenario(server.pid, n, lambda: request(f"{base}/api/images/lvgl?url={image_base}/photo.png&width=320")),
        }
        alive = server.poll() is None
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
        images.shutdown()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)

    mib = lambda kib: f"{kib / 1024:8.1f}"
    print(f"# image conversion memory {args.label} ({args.bin}); {n} concurrent requests; bomb {len(files['bomb.png'])} bytes, photo {len(files['photo.png'])} bytes")
    print(f"idle VmRSS before the first scenario: {mib(idle).strip()} MiB; server alive at the end: {alive}")
    print(f"{'scenario':<12} {'statuses':<16} {'time s':>7} {'before':>8} {'peak':>8} {'+2 s':>8} {'+10 s':>8}   (VmRSS, MiB)")
    for name, r in results.items():
        print(f"{name:<12} {r['statuses']:<16} {r['seconds']:7.2f} {mib(r['before'])} {mib(r['peak'])} {mib(r['after_2s'])} {mib(r['after_10s'])}")
    print(json.dumps({"label": args.label, "idle_kib": idle, "results": results}))


if __name__ == "__main__":
    sys.exit(main())
