-- MQTT: operator and service credentials of the broker (devices use their device tokens),
-- and the commands sent to devices over MQTT with their results. Portable SQL (README.md).

CREATE TABLE mqtt_user (
    username TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,            -- Argon2id PHC string; never the password
    role TEXT NOT NULL,                     -- fleet-read | gateway | admin
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE device_command (
    id TEXT PRIMARY KEY,                    -- UUIDv7
    device_id TEXT NOT NULL REFERENCES device (id) ON DELETE CASCADE,
    name TEXT NOT NULL,                     -- reboot, check-update, ping, or a device-defined name
    params TEXT,                            -- JSON
    state TEXT NOT NULL,                    -- sent | succeeded | failed | timed_out
    result TEXT,                            -- JSON, as the device answered
    error TEXT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    completed_at BIGINT
);
CREATE INDEX device_command_device_idx ON device_command (device_id, created_at);
CREATE INDEX device_command_open_idx ON device_command (state, expires_at);
