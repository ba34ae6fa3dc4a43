-- Releases and staged rollouts: releases (builds of a product shipped together under one
-- version), saved device groups, rollouts with their stages, the per-device record of each
-- rollout (what hawkBit calls an action), every life-cycle transition, and a revision
-- counter that replicas poll to reload their in-memory view of running rollouts.
-- Portable SQL (see README.md here). `release` is a keyword in SQL, hence `firmware_release`.

CREATE TABLE firmware_release (
    id TEXT PRIMARY KEY,
    product TEXT NOT NULL,
    version TEXT NOT NULL,                  -- as given, e.g. "1.02"
    version_key TEXT NOT NULL,              -- canonical semver
    channel TEXT NOT NULL,
    notes TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX firmware_release_version_idx ON firmware_release (product, version_key);

-- A build belongs to at most one release: the primary key on artifact_id.
CREATE TABLE release_artifact (
    artifact_id TEXT PRIMARY KEY REFERENCES artifact (id),
    release_id TEXT NOT NULL REFERENCES firmware_release (id)
);
CREATE INDEX release_artifact_release_idx ON release_artifact (release_id);

CREATE TABLE device_group (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX device_group_name_idx ON device_group (name);

CREATE TABLE device_group_member (
    group_id TEXT NOT NULL REFERENCES device_group (id),
    device_id TEXT NOT NULL,
    PRIMARY KEY (group_id, device_id)
);
CREATE INDEX device_group_member_device_idx ON device_group_member (device_id);

CREATE TABLE rollout (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    release_id TEXT NOT NULL REFERENCES firmware_release (id),
    product TEXT NOT NULL,
    target TEXT NOT NULL,                   -- JSON: the target filter
    stages TEXT NOT NULL,                   -- JSON: sizes and thresholds
    options TEXT NOT NULL,                  -- JSON: window, max downloads, forced, dynamic, deadline
    state TEXT NOT NULL,                    -- draft | running | paused | completed | cancelled | halted | rolled_back
    reason TEXT NOT NULL,                   -- why it is in its state
    current_stage BIGINT NOT NULL,          -- 0-based; meaningful once started
    shares TEXT NOT NULL,                   -- JSON: cumulative share of each started stage, fixed when it started
    stage_sizes TEXT NOT NULL,              -- JSON: devices of the target in each started stage, last counted
    target_size BIGINT NOT NULL,            -- devices matching the target, last counted
    start_at BIGINT,                        -- scheduled start
    started_at BIGINT,
    stage_started_at BIGINT,
    counted_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX rollout_state_idx ON rollout (state);
CREATE INDEX rollout_release_idx ON rollout (release_id);

CREATE TABLE rollout_transition (
    id TEXT PRIMARY KEY,                    -- UUIDv7: ordered by time
    rollout_id TEXT NOT NULL REFERENCES rollout (id),
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    stage BIGINT NOT NULL,
    actor TEXT NOT NULL,                    -- `operator` or `rule:<name>`
    reason TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX rollout_transition_rollout_idx ON rollout_transition (rollout_id, id);

-- One row per device a rollout offered its release to. No foreign key to device: history
-- outlives deleted devices.
CREATE TABLE rollout_member (
    rollout_id TEXT NOT NULL REFERENCES rollout (id),
    device_id TEXT NOT NULL,
    stage BIGINT NOT NULL,
    state TEXT NOT NULL,                    -- offered .. installed | succeeded | failed | timed_out
    attempt_id TEXT NOT NULL,
    from_version TEXT,
    message TEXT,
    offered_at BIGINT NOT NULL,
    deadline_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_member_state_idx ON rollout_member (rollout_id, state, deadline_at);
CREATE INDEX rollout_member_attempt_idx ON rollout_member (attempt_id);

-- Bumped in every transaction that changes what check-ins may be offered (releases,
-- rollouts, groups); each replica polls it once a second.
CREATE TABLE rollout_revision (
    id BIGINT PRIMARY KEY,
    n BIGINT NOT NULL
);
INSERT INTO rollout_revision (id, n) VALUES (1, 0);

-- Counting a rollout's target reads a product's devices in id order, a page at a time.
CREATE INDEX device_product_id_idx ON device (product, id);

ALTER TABLE update_attempt ADD COLUMN rollout_id TEXT;
-- The anti-rollback floor: rollbacks (and pins) below this version are refused.
ALTER TABLE product ADD COLUMN min_version TEXT;
