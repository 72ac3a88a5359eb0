-- Version 3: leases (the active dispatcher among several on one store).
CREATE TABLE leases (
    name          TEXT PRIMARY KEY,
    holder        TEXT NOT NULL,
    expires_at_us BIGINT NOT NULL
);
