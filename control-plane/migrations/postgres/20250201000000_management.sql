-- Management state: virtual keys, users, teams, and the one version counter every change
-- bumps (in the same transaction) so that replicas agree on snapshot versions.

CREATE TABLE state_version (
    id BIGINT PRIMARY KEY NOT NULL,
    version BIGINT NOT NULL
);
INSERT INTO state_version (id, version) VALUES (1, 0);

CREATE TABLE users (
    user_id TEXT PRIMARY KEY NOT NULL,
    user_email TEXT,
    user_role TEXT NOT NULL,
    models TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX users_email ON users (user_email);

CREATE TABLE teams (
    team_id TEXT PRIMARY KEY NOT NULL,
    team_alias TEXT UNIQUE,
    models TEXT NOT NULL,
    metadata TEXT NOT NULL,
    blocked BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE team_members (
    team_id TEXT NOT NULL REFERENCES teams (team_id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users (user_id),
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (team_id, user_id)
);

-- Only the SHA-256 hex of a key is stored (`token`, as LiteLLM calls it).
CREATE TABLE virtual_keys (
    token TEXT PRIMARY KEY NOT NULL,
    key_name TEXT NOT NULL,
    key_alias TEXT UNIQUE,
    user_id TEXT REFERENCES users (user_id),
    team_id TEXT REFERENCES teams (team_id),
    models TEXT NOT NULL,
    blocked BOOLEAN NOT NULL,
    expires BIGINT,
    metadata TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX virtual_keys_user ON virtual_keys (user_id);
CREATE INDEX virtual_keys_team ON virtual_keys (team_id);
