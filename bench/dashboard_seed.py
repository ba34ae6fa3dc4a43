#!/usr/bin/env python3
"""Varies a fleet seeded by checkin_seed.py for the dashboard benchmark (server stopped).

Device i (rowid order) gets: product `bench` (3 in 4) or `lamp`; hardware `esp32` (2 in 3)
or `esp32s3`; version 1.0.<i mod 5> (none for 1 in 50); owner `owner-<i mod 100>`; a
`last_seen` spread over the last 20 minutes (about half online with the default 10-minute
offline period; 1 in 10 never seen); and the name `bench-<i>` stays.

    dashboard_seed.py DB_FILE
"""
import sqlite3
import sys
import time


def main() -> None:
    db = sqlite3.connect(sys.argv[1])
    now = int(time.time() * 1000)
    started = time.time()
    db.execute(
        """UPDATE device SET
             product = CASE WHEN rowid % 4 = 0 THEN 'lamp' ELSE 'bench' END,
             hardware = CASE WHEN rowid % 3 = 0 THEN 'esp32s3' ELSE 'esp32' END,
             version = CASE WHEN rowid % 50 = 0 THEN NULL ELSE '1.0.' || (rowid % 5) END,
             owner = 'owner-' || (rowid % 100),
             last_seen = CASE WHEN rowid % 10 = 0 THEN NULL ELSE ? - (rowid * 7919 % 1200) * 1000 END""",
        (now,),
    )
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    print(f"varied the fleet in {time.time() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
