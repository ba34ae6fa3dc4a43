#!/usr/bin/env python3
"""Seeds N devices straight into an Updraft SQLite database (the server must be stopped).

Device i has MAC 02:xx:xx:xx:xx:xx (i in the low 40 bits), product `bench`, hardware
`esp32`, version 1.0.0, and the token `upd_dev_bench_<i>` (stored, like the server does,
as its SHA-256 hex digest).

    checkin_seed.py DB_FILE N [RINGS]

With RINGS, device i also has the tag `ring-<i mod RINGS>` (the rollout benchmark targets
each ring with its own rollout).
"""
import hashlib
import os
import sqlite3
import sys
import time
import uuid


def uuid7(millis: int) -> str:
    """A UUIDv7 (RFC 9562) for a Unix time in milliseconds: 48-bit time, version 7, random rest."""
    value = (millis & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # variant
    return str(uuid.UUID(int=value))


def main() -> None:
    db_file, n = sys.argv[1], int(sys.argv[2])
    rings = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    db = sqlite3.connect(db_file)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = OFF")
    now = int(time.time() * 1000)
    started = time.time()

    def rows():
        for i in range(1, n + 1):
            mac = "02:" + ":".join(f"{(i >> s) & 0xFF:02X}" for s in (32, 24, 16, 8, 0))
            token_hash = hashlib.sha256(f"upd_dev_bench_{i}".encode()).hexdigest()
            tags = f'["ring-{i % rings}"]' if rings else "[]"
            created = now - n + i
            yield (ids[i], mac, f"bench-{i}", "bench", "esp32", "stable", "1.0.0", None, tags, "{}", "{}", None,
                   token_hash, created, None, None, None, created, created)

    # UUIDv7 ids, as the server gives (a device's id begins with its registration time; the
    # rollout target index relies on it): device i registered i ms after now - N ms.
    ids = {i: uuid7(now - n + i) for i in range(1, n + 1)}

    db.executemany(
        "INSERT INTO device (id, mac, name, product, hardware, channel, version, target_version, tags, attributes, metadata, owner,"
        " token_hash, token_created_at, last_seen, ip, setup_status, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows(),
    )
    if rings:
        db.executemany("INSERT INTO device_tag (device_id, tag) VALUES (?, ?)", ((ids[i], f"ring-{i % rings}") for i in range(1, n + 1)))
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    print(f"seeded {n} devices in {time.time() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
