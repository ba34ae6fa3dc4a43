-- Foundation schema: server secrets and the firmware store.
-- Portable SQL: it runs unchanged on SQLite and PostgreSQL. Conventions (see README.md here):
-- singular table names, TEXT ids, BIGINT for integers, booleans and times (Unix milliseconds, UTC),
-- JSON as TEXT.

CREATE TABLE server_secret (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE artifact (
    id TEXT PRIMARY KEY,
    product TEXT NOT NULL,
    version TEXT NOT NULL,          -- as uploaded, e.g. "1.02"
    version_key TEXT NOT NULL,      -- canonical semver, e.g. "1.2.0"
    hardware TEXT NOT NULL,         -- JSON array of lower-case identifiers
    channel TEXT NOT NULL,
    notes TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    sha1 TEXT NOT NULL,
    md5 TEXT NOT NULL,
    blob_key TEXT NOT NULL,
    image TEXT,                     -- JSON: facts read from an ESP32 app image
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX artifact_product_created_idx ON artifact (product, created_at);
CREATE INDEX artifact_created_idx ON artifact (created_at);
CREATE INDEX artifact_sha256_idx ON artifact (sha256);

-- One row per (product, version, hardware) slot an artifact occupies. The primary key is
-- what makes "same version, different bytes" a conflict even under concurrent uploads.
CREATE TABLE artifact_hardware (
    product TEXT NOT NULL,
    version_key TEXT NOT NULL,
    hardware TEXT NOT NULL,
    artifact_id TEXT NOT NULL REFERENCES artifact (id),
    PRIMARY KEY (product, version_key, hardware)
);
CREATE INDEX artifact_hardware_artifact_idx ON artifact_hardware (artifact_id);
CREATE INDEX artifact_hardware_hardware_idx ON artifact_hardware (hardware, artifact_id);
