-- Compatibility protocols: the file names under which the seed-001 server ("ESP32 OTA Update
-- Server") knew its firmware, and the build an operator marked "latest" for the seed-002
-- protocol (Cyberdeck `/ota`). Neither references artifact with a foreign key: deleting a
-- build through the native API must not fail because of them; lookups join artifact, so a
-- name of a deleted build simply stops resolving. Portable SQL (see README.md here).

CREATE TABLE compat_file (
    name TEXT PRIMARY KEY,                  -- as uploaded, e.g. "panic_1.3.8.bin"
    artifact_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX compat_file_artifact_idx ON compat_file (artifact_id);

CREATE TABLE product_latest (
    product TEXT PRIMARY KEY,
    artifact_id TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
