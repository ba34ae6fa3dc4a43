-- Operators (issue 14): user accounts, named API keys and browser sessions. Portable SQL
-- (README.md). Secrets are never stored: passwords as Argon2id hashes, keys, session
-- tokens and CSRF tokens as SHA-256 digests (hex).

CREATE TABLE operator_user (
    username TEXT PRIMARY KEY,              -- lower case, [a-z0-9._@-]
    password_hash TEXT NOT NULL,            -- Argon2id PHC string; never the password
    role TEXT NOT NULL,                     -- admin | operator | viewer | provisioner
    disabled BIGINT NOT NULL DEFAULT 0,     -- 1: refused at login; its sessions are revoked
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE api_key (
    id TEXT PRIMARY KEY,                    -- the lookup id in upd_<id>_<secret>; `admin` for the original admin key
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    digest TEXT NOT NULL,                   -- SHA-256 of the whole key, hex
    expires_at BIGINT,
    created_by TEXT NOT NULL,               -- actor: key:admin, user:alice, cli
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,                    -- written at most about once a minute per key
    revoked_at BIGINT,
    owner TEXT                              -- a username: refused while that user is disabled
);
-- A name names one key that is not revoked; a revoked key's name may be used again.
CREATE UNIQUE INDEX api_key_name_idx ON api_key (name) WHERE revoked_at IS NULL;

CREATE TABLE operator_session (
    id TEXT PRIMARY KEY,                    -- UUIDv7: public, to list and revoke
    token_digest TEXT NOT NULL,             -- SHA-256 of the cookie's value, hex
    csrf_digest TEXT NOT NULL,              -- SHA-256 of the CSRF token, hex
    principal_kind TEXT NOT NULL,           -- user | key | oidc
    principal_name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,           -- written at most about once a minute per session
    expires_at BIGINT NOT NULL,             -- absolute expiry
    revoked_at BIGINT,
    client_ip TEXT,
    user_agent TEXT
);
CREATE UNIQUE INDEX operator_session_token_idx ON operator_session (token_digest);
CREATE INDEX operator_session_principal_idx ON operator_session (principal_kind, principal_name);
