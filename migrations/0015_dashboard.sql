-- The dashboard's fleet-wide reads (issue 15). Portable SQL (see README.md here).

-- The fleet summary groups every device by product, hardware, version and presence: this
-- index covers it (and the build usage counts), so the pass reads no table rows.
CREATE INDEX device_summary_idx ON device (product, hardware, version, last_seen);

-- The device list sorted by name.
CREATE INDEX device_name_idx ON device (name, id);

-- Update attempts across the fleet, by state and time of the last change, newest first.
CREATE INDEX update_attempt_state_updated_idx ON update_attempt (state, updated_at);
CREATE INDEX update_attempt_updated_idx ON update_attempt (updated_at);

-- The device list of one product, newest first (the default order): walked in order and
-- stopped after the page, whatever the share of the product.
CREATE INDEX device_product_created_idx ON device (product, created_at, id);

-- The device list filtered by owner.
CREATE INDEX device_owner_idx ON device (owner);

-- The device list's text search (`q`) in the default order: the columns it searches ride in
-- the index of that order, so that counting and paging a search read this index rather than
-- every row of the table.
CREATE INDEX device_created_search_idx ON device (created_at, id, name, mac, owner);
