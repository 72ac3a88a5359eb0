-- Version 5: nodes, the Docker engines instances may be placed on.
CREATE TABLE nodes (
    name          TEXT PRIMARY KEY,
    docker_host   TEXT NOT NULL,
    capacity      BIGINT NOT NULL,
    labels        TEXT NOT NULL,
    draining      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at_us BIGINT NOT NULL
);
