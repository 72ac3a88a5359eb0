-- Where a service's HTTP requests may come from: `all` or `internal`.
ALTER TABLE services ADD COLUMN ingress TEXT NOT NULL DEFAULT 'all';
-- Whether a revision's instances speak HTTP/2 without TLS (h2c).
ALTER TABLE revisions ADD COLUMN http2 BOOLEAN NOT NULL DEFAULT FALSE;
