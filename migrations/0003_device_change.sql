-- A log of device changes (token, registry fields, reports, deletion), so that every
-- replica can drop its cached copy of a changed device within a second. Rows older than a
-- few minutes are pruned.
CREATE TABLE device_change (
    id TEXT PRIMARY KEY,                    -- UUIDv7
    device_id TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX device_change_at_idx ON device_change (at);
