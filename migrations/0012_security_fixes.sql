-- Security fixes (issue 12). Portable SQL (see README.md here).

-- The hardware a product admits, as a JSON array of hardware ids; NULL admits any. When
-- set, a device's hardware is fixed by an operator or at provisioning, and a check-in that
-- reports another one is refused (409 hardware_mismatch).
ALTER TABLE product ADD COLUMN hardware TEXT;

-- 1: anonymous reads of seed 003's GET /api/configs/{mac}.json include the values marked
-- secret (Wi-Fi credentials of devices that cannot send a token). Off by default.
ALTER TABLE product ADD COLUMN public_secrets BIGINT NOT NULL DEFAULT 0;

-- Until this time (Unix ms), a device that holds a token may be provisioned again without
-- presenting it (an operator's "allow re-provisioning until T"). Cleared when used.
ALTER TABLE device ADD COLUMN reprovision_until BIGINT;
