-- A device has at most one current update attempt. Two check-ins of one device racing on
-- PostgreSQL could each close "the" current attempt (none yet visible) and open their own;
-- the partial unique index makes the second insert fail, and the store then answers with
-- the attempt that won. Older duplicates keep only their newest (ids are UUIDv7) current.

UPDATE update_attempt SET current = 0
WHERE current = 1
  AND id NOT IN (SELECT MAX(id) FROM update_attempt WHERE current = 1 GROUP BY device_id);

CREATE UNIQUE INDEX update_attempt_one_current_idx ON update_attempt (device_id) WHERE current = 1;
