-- Devices without a MAC (issue 16). Portable SQL (see README.md here).

-- A device may be known by a unique name instead of (or beside) its MAC: ThingsBoard's
-- `deviceName`, a hawkBit DDI `controllerId`. `name` stays the operator's display name.
ALTER TABLE device ADD COLUMN uid TEXT;
CREATE UNIQUE INDEX device_uid_idx ON device (uid);

-- `mac` becomes optional. Neither database can drop NOT NULL the same way, and rebuilding
-- the table is not possible while other tables have foreign keys to it: copy the column
-- into a new nullable one, drop the old one (SQLite drops only unindexed columns) and
-- give the new one its name and index back.
ALTER TABLE device ADD COLUMN mac_address TEXT;
UPDATE device SET mac_address = mac;
-- (The search index of migration 0015 names `mac`: dropped here, made again below.)
DROP INDEX device_created_search_idx;
DROP INDEX device_mac_idx;
ALTER TABLE device DROP COLUMN mac;
ALTER TABLE device RENAME COLUMN mac_address TO mac;
CREATE UNIQUE INDEX device_mac_idx ON device (mac);

-- The device list's text search (`q`) also matches the name: the covering index of the
-- default order (migration 0015) carries it too, so a search still reads no table row.
CREATE INDEX device_created_search_idx ON device (created_at, id, name, mac, uid, owner);
