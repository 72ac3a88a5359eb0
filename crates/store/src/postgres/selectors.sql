-- A service's node selector: labels a node must carry for its image
-- instances (a JSON object, as env).
ALTER TABLE services ADD COLUMN node_selector TEXT NOT NULL DEFAULT '{}';
