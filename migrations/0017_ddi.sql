-- hawkBit DDI (issue 16). Portable SQL (see README.md here).

-- DDI action ids are numbers (SWUpdate parses them as integers): every attempt opened from
-- now on gets the next one from `action_sequence`. Attempts opened before this migration
-- get one the first time a DDI device asks for them.
ALTER TABLE update_attempt ADD COLUMN action_id BIGINT;
CREATE UNIQUE INDEX update_attempt_action_idx ON update_attempt (action_id);

CREATE TABLE action_sequence (
    id BIGINT PRIMARY KEY,       -- always 1: one row
    next_id BIGINT NOT NULL
);
INSERT INTO action_sequence (id, next_id) VALUES (1, 1);

-- SHA-256 hex of the product's DDI gateway token (`Authorization: GatewayToken`), which
-- acts for any device of the product and registers unknown controller ids per its
-- provisioning mode. NULL: none.
ALTER TABLE product ADD COLUMN ddi_gateway_token_hash TEXT;
CREATE INDEX product_ddi_gateway_idx ON product (ddi_gateway_token_hash);
