-- Where a service's HTTP requests may come from: `all` or `internal`.
ALTER TABLE services ADD COLUMN ingress TEXT NOT NULL DEFAULT 'all';
