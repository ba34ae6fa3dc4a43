-- Device configuration (layered, versioned documents), seed-003 asset files and native
-- signed assets. Portable SQL (see README.md here).

-- The current state of each configuration layer. `scope` is product:<name>, tag:<tag> or
-- device:<AA:BB:CC:DD:EE:FF>. `version` counts every change, deletions included, so it
-- never repeats; `content` is NULL while the document is deleted. Secret values inside
-- `content` are encrypted (`{"$encrypted": "..."}`).
CREATE TABLE config_document (
    scope TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    content TEXT,
    updated_at BIGINT NOT NULL
);

-- Every version of every layer, written in the same transaction as config_document.
CREATE TABLE config_version (
    scope TEXT NOT NULL,
    version BIGINT NOT NULL,
    content TEXT,                           -- NULL: this version deleted the document
    author TEXT NOT NULL,
    comment TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (scope, version)
);

-- An optional JSON Schema per product, checked against every device's effective configuration.
CREATE TABLE config_schema (
    product TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- The effective configuration version each device last reported as applied.
CREATE TABLE config_ack (
    device_id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    at BIGINT NOT NULL
);

-- Seed-003 assets: files by name, uploaded with an RSA-signed timestamp; overwritten in place.
CREATE TABLE asset_file (
    filename TEXT PRIMARY KEY,
    blob_key TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    uploaded_at BIGINT NOT NULL
);

-- Native assets: immutable versions per product and name, identified by their SHA-256
-- (identical bytes share one blob) and signed with the server's Ed25519 key.
CREATE TABLE asset (
    id TEXT PRIMARY KEY,
    product TEXT NOT NULL,
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    content_type TEXT NOT NULL,
    blob_key TEXT NOT NULL,
    signature TEXT NOT NULL,                -- base64 Ed25519 signature of the signed statement
    comment TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX asset_version_idx ON asset (product, name, version);
CREATE INDEX asset_sha256_idx ON asset (sha256);
