-- The audit log: one row per state-changing operator request (and per refused attempt on an
-- operator route). Written in batches by services::audit; pruned by age
-- (UPDRAFT_AUDIT_RETENTION_DAYS). No request bodies and no query strings are ever stored.
-- Portable SQL (README.md).

CREATE TABLE audit_event (
    id TEXT PRIMARY KEY,                    -- UUIDv7 (time-ordered)
    at BIGINT NOT NULL,                     -- when the answer was made (Unix ms, UTC)
    actor TEXT NOT NULL,                    -- user:alice, key:ci, oidc:bob, or anonymous
    role TEXT,                              -- the actor's role, when authenticated
    action TEXT NOT NULL,                   -- the OpenAPI operationId, or "METHOD /template"
    method TEXT NOT NULL,
    route TEXT NOT NULL,                    -- the route template, e.g. /api/v1/devices/{id}
    target TEXT NOT NULL,                   -- the concrete path (never the query)
    resource TEXT,                          -- the path parameters' values, joined by /
    ip TEXT NOT NULL,                       -- the client, as resolved behind trusted proxies
    status BIGINT NOT NULL,                 -- the HTTP status answered
    outcome TEXT NOT NULL,                  -- ok | denied | failed
    request_id TEXT,                        -- X-Request-Id
    note TEXT                               -- what a handler added (e.g. the attempted user name)
);
CREATE INDEX audit_event_at_idx ON audit_event (at);
CREATE INDEX audit_event_actor_idx ON audit_event (actor, at);
CREATE INDEX audit_event_action_idx ON audit_event (action, at);
