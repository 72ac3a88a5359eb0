-- Idle instances frozen rather than stopped, and for how long.
ALTER TABLE services ADD COLUMN freeze_idle BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE services ADD COLUMN frozen_timeout_ms BIGINT NOT NULL DEFAULT 900000;
