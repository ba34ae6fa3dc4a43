#!/usr/bin/env python3
"""Check-in latency under slow and hostile clients (bench/hostile.sh runs it).

For each attack: the attack starts (many raw sockets, from loopback addresses other than the
probe's 127.0.0.1, so that the per-address limit is not what stops it), then a device's
check-in on a new connection is timed every 100 ms for --seconds, then the attack's sockets
are closed. Prints one line per attack: `attack<TAB>p50_ms<TAB>p99_ms<TAB>max_ms<TAB>failed/probes`.
A probe that gets no 200 within 10 s counts as failed.
"""

import argparse
import asyncio
import socket
import statistics
import time


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mqtt-port", type=int, required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--key", required=True, help="admin key (compressed uploads)")
    p.add_argument("--conns", type=int, default=900, help="connections of the slow-loris attacks")
    p.add_argument("--flood", type=int, default=1500, help="silent connections (beyond UPDRAFT_MAX_CONNECTIONS)")
    p.add_argument("--per-address", type=int, default=100, help="attack connections per source address")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--only", default="", help="comma-separated attack names")
    return p.parse_args()


ARGS = None


def source(n):
    """The source address of the n-th attack connection: 127.0.1.x, 127.0.2.x, ..."""
    k = n // ARGS.per_address
    return f"127.0.{1 + k // 250}.{1 + k % 250}"


async def open_from(n, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind((source(n), 0))
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)


async def connection(n, port):
    return await open_from(n, port)


async def probe(path_body):
    """One check-in on a new connection; its latency in ms, or None."""
    started = time.perf_counter()
    try:
        async def once():
            reader, writer = await asyncio.open_connection("127.0.0.1", ARGS.port)
            writer.write(path_body)
            await writer.drain()
            line = await reader.readline()
            writer.close()
            return line.startswith(b"HTTP/1.1 200")
        ok = await asyncio.wait_for(once(), 10)
    except (OSError, asyncio.TimeoutError):
        ok = False
    return (time.perf_counter() - started) * 1000 if ok else None


async def measure(name):
    body = b'{"version":"1.0.0"}'
    request = (
        f"POST /api/v1/device/checkin HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ARGS.token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    results = []
    deadline = time.monotonic() + ARGS.seconds
    while time.monotonic() < deadline:
        results.append(await probe(request))
        await asyncio.sleep(0.1)
    good = sorted(r for r in results if r is not None)
    failed = len(results) - len(good)
    if good:
        p50 = statistics.median(good)
        p99 = good[min(len(good) - 1, int(len(good) * 0.99))]
        line = f"{name}\t{p50:.1f}\t{p99:.1f}\t{good[-1]:.1f}\t{failed}/{len(results)}"
    else:
        line = f"{name}\t-\t-\t-\t{failed}/{len(results)}"
    print(line, flush=True)


# ---- attacks: each runs until cancelled ----

async def hold(writers):
    try:
        await asyncio.Event().wait()
    finally:
        for w in writers:
            w.close()


async def header_loris():
    head = b"POST /api/v1/device/checkin HTTP/1.1\r\nHost: x\r\nX-Slow: "
    await asyncio.gather(*(trickle(n, head, b"a", 0.5) for n in range(ARGS.conns)))


async def trickle(n, head, byte, every):
    """Sends `head`, then `byte` every `every` s; reconnects when the server closes it, as
    an attacker would."""
    while True:
        try:
            reader, writer = await connection(n, ARGS.port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        try:
            writer.write(head)
            while True:
                await asyncio.sleep(every)
                writer.write(byte)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()


async def body_loris():
    head = (b"POST /api/v1/device/provision HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n{")
    await asyncio.gather(*(trickle(n, head, b" ", 1) for n in range(ARGS.conns)))


async def silent_flood():
    writers = []
    for n in range(ARGS.flood):
        try:
            _, writer = await asyncio.wait_for(connection(n, ARGS.port), 5)
            writers.append(writer)
        except (OSError, asyncio.TimeoutError):
            pass
    await hold(writers)


async def oversized_heads():
    big = "X-Big: " + "a" * 16384 + "\r\n"
    many = "".join(f"X-H{i}: {i}\r\n" for i in range(300))

    async def worker(n):
        while True:
            try:
                reader, writer = await connection(n, ARGS.port)
                writer.write(f"GET /api/v1/device/checkin HTTP/1.1\r\nHost: x\r\n{big if n % 2 else many}\r\n".encode())
                await writer.drain()
                await reader.read(4096)
                writer.close()
            except OSError:
                await asyncio.sleep(0.01)
    await asyncio.gather(*(worker(n) for n in range(32)))


async def mqtt_unfinished_connect():
    writers = []
    half_connect = bytes([0x10, 40, 0, 4]) + b"MQTT" + bytes([4, 0xC2, 0, 60])
    for n in range(ARGS.conns):
        try:
            _, writer = await asyncio.wait_for(connection(n, ARGS.mqtt_port), 5)
            if n % 2:
                writer.write(half_connect)
            writers.append(writer)
        except (OSError, asyncio.TimeoutError):
            pass
    await hold(writers)


async def gzip_uploads():
    import gzip
    data = gzip.compress(bytes(8 << 20))  # 8 MiB of zeros, about 8 KiB sent

    async def worker(w):
        k = 0
        while True:
            k += 1
            reader, writer = await asyncio.open_connection("127.0.0.1", ARGS.port)
            writer.write(
                (f"POST /api/v1/firmware?product=hostile&version=1.{w}.{k}&hardware=esp32 HTTP/1.1\r\nHost: x\r\n"
                 f"Authorization: Bearer {ARGS.key}\r\nContent-Type: application/octet-stream\r\nContent-Encoding: gzip\r\n"
                 f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data)
            await writer.drain()
            await reader.read()
            writer.close()
    await asyncio.gather(*(worker(w) for w in range(4)))


ATTACKS = [
    ("none (baseline)", None),
    ("header slow-loris", header_loris),
    ("body slow-loris", body_loris),
    ("silent connections beyond the limit", silent_flood),
    ("oversized request heads", oversized_heads),
    ("unfinished MQTT CONNECTs", mqtt_unfinished_connect),
    ("gzip-encoded uploads", gzip_uploads),
]


async def main():
    only = [a.strip() for a in ARGS.only.split(",") if a.strip()]
    for name, attack in ATTACKS:
        if only and not any(o in name for o in only):
            continue
        task = asyncio.ensure_future(attack()) if attack else None
        await asyncio.sleep(2 if attack else 0)  # let it take hold
        await measure(name)
        if task:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, OSError):
                pass
        await asyncio.sleep(1)


if __name__ == "__main__":
    ARGS = parse()
    asyncio.run(main())
