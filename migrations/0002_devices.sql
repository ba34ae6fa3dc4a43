-- Devices: products (provisioning policy), the registry, pairing keys, setup progress and
-- update history. Portable SQL (see README.md here).

CREATE TABLE product (
    name TEXT PRIMARY KEY,
    provisioning TEXT NOT NULL,             -- open | key | preregistered
    provision_key TEXT,                     -- public half of the key/secret pair
    provision_secret_hash TEXT,             -- SHA-256 hex of the secret
    poll_interval_s BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX product_provision_key_idx ON product (provision_key);

CREATE TABLE device (
    id TEXT PRIMARY KEY,
    mac TEXT NOT NULL,                      -- canonical AA:BB:CC:DD:EE:FF
    name TEXT NOT NULL,
    product TEXT,
    hardware TEXT,                          -- lower-case
    channel TEXT NOT NULL,
    version TEXT,                           -- as reported
    target_version TEXT,                    -- operator pin
    tags TEXT NOT NULL,                     -- JSON array
    attributes TEXT NOT NULL,               -- JSON object, device-reported
    metadata TEXT NOT NULL,                 -- JSON object, operator-owned
    owner TEXT,
    token_hash TEXT,                        -- SHA-256 hex of the device token
    token_created_at BIGINT,
    last_seen BIGINT,
    ip TEXT,
    setup_status TEXT,                      -- JSON of the last setup report
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX device_mac_idx ON device (mac);
CREATE UNIQUE INDEX device_token_hash_idx ON device (token_hash);
CREATE INDEX device_product_idx ON device (product, hardware);
CREATE INDEX device_last_seen_idx ON device (last_seen);
CREATE INDEX device_created_idx ON device (created_at);

CREATE TABLE device_tag (
    device_id TEXT NOT NULL REFERENCES device (id),
    tag TEXT NOT NULL,
    PRIMARY KEY (device_id, tag)
);
CREATE INDEX device_tag_tag_idx ON device_tag (tag, device_id);

CREATE TABLE pairing (
    key_hash TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    device_id TEXT,
    created_at BIGINT NOT NULL
);

CREATE TABLE setup_event (
    id TEXT PRIMARY KEY,                    -- UUIDv7: ordered by time
    device_id TEXT NOT NULL REFERENCES device (id),
    code BIGINT NOT NULL,
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX setup_event_device_idx ON setup_event (device_id, id);

-- One row per attempt to bring a device to a build; its states in update_event.
CREATE TABLE update_attempt (
    id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES device (id),
    artifact_id TEXT NOT NULL,
    release_id TEXT NOT NULL,
    from_version TEXT,
    to_version TEXT NOT NULL,
    state TEXT NOT NULL,
    progress BIGINT,
    message TEXT,
    current BIGINT NOT NULL,                -- 1 for the device's current attempt, else 0
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX update_attempt_device_idx ON update_attempt (device_id, current);
CREATE INDEX update_attempt_artifact_idx ON update_attempt (artifact_id);

CREATE TABLE update_event (
    id TEXT PRIMARY KEY,
    attempt_id TEXT NOT NULL REFERENCES update_attempt (id),
    state TEXT NOT NULL,
    progress BIGINT,
    message TEXT,
    at BIGINT NOT NULL
);
CREATE INDEX update_event_attempt_idx ON update_event (attempt_id, id);
