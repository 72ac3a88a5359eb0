-- Questions run again after the platform failed them, and where they go
-- after the last attempt.
ALTER TABLE services ADD COLUMN max_retries BIGINT NOT NULL DEFAULT 0;
ALTER TABLE services ADD COLUMN dead_letter_topic TEXT;
