-- Snapshot deltas: the control plane reads only the keys that changed since the version it
-- serves. Every write of a key sets its changed_version to the write's version; a key that
-- goes away (deleted, or renamed by regeneration) leaves its token in removed_keys; every
-- write of deployments sets deployments_version (they are read again only after one).
ALTER TABLE virtual_keys ADD COLUMN changed_version BIGINT NOT NULL DEFAULT 0;
CREATE INDEX virtual_keys_changed ON virtual_keys (changed_version);

CREATE TABLE removed_keys (
    token TEXT PRIMARY KEY NOT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX removed_keys_version ON removed_keys (version);

ALTER TABLE state_version ADD COLUMN deployments_version BIGINT NOT NULL DEFAULT 0;
