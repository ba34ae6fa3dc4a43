-- Rollout fixes: failures excused when a halted rollout is resumed, the completion time
-- (a completed rollout offers its release for a catch-up period only), and the products
-- whose builds go out through rollouts. Portable SQL (see README.md here).

-- 1 when the failure was already counted by a halt that an operator then resumed: the
-- error threshold counts only failures that are not excused.
ALTER TABLE rollout_member ADD COLUMN excused BIGINT NOT NULL DEFAULT 0;

ALTER TABLE rollout ADD COLUMN completed_at BIGINT;
UPDATE rollout SET completed_at = updated_at WHERE state = 'completed';

-- A product is managed by rollouts from its first release on (for good: deleting releases
-- does not undo it). Its builds uploaded since then are offered only through rollouts or pins.
CREATE TABLE managed_product (
    product TEXT PRIMARY KEY,
    since BIGINT NOT NULL
);
INSERT INTO managed_product (product, since) SELECT product, MIN(created_at) FROM firmware_release GROUP BY product;
