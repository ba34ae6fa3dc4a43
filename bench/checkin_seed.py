#!/usr/bin/env python3
"""Seeds N devices straight into an Updraft SQLite database (the server must be stopped).

Device i has MAC 02:xx:xx:xx:xx:xx (i in the low 40 bits), product `bench`, hardware
`esp32`, version 1.0.0, and the token `upd_dev_bench_<i>` (stored, like the server does,
as its SHA-256 hex digest).

    checkin_seed.py DB_FILE N
"""
import hashlib
import sqlite3
import sys
import time
import uuid


def main() -> None:
    db_file, n = sys.argv[1], int(sys.argv[2])
    db = sqlite3.connect(db_file)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = OFF")
    now = int(time.time() * 1000)
    started = time.time()

    def rows():
        for i in range(1, n + 1):
            mac = "02:" + ":".join(f"{(i >> s) & 0xFF:02X}" for s in (32, 24, 16, 8, 0))
            token_hash = hashlib.sha256(f"upd_dev_bench_{i}".encode()).hexdigest()
            yield (str(uuid.uuid4()), mac, f"bench-{i}", "bench", "esp32", "stable", "1.0.0", None, "[]", "{}", "{}", None,
                   token_hash, now, None, None, None, now, now)

    db.executemany(
        "INSERT INTO device (id, mac, name, product, hardware, channel, version, target_version, tags, attributes, metadata, owner,"
        " token_hash, token_created_at, last_seen, ip, setup_status, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows(),
    )
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    print(f"seeded {n} devices in {time.time() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
