-- Rate-limit counters of the quota authority (src/store/quota.rs): what was granted (and
-- overrun) in each minute window, and the parallel-request slots each stream holds.
CREATE TABLE quota_counters (
    -- The protocol's BudgetScope as text (key, user, team, end_user, global, key_model,
    -- deployment) and the scope's id.
    scope TEXT NOT NULL,
    id TEXT NOT NULL,
    -- requests, tokens or parallel.
    kind TEXT NOT NULL,
    -- Unix ms of the minute window's start; 0 for parallel.
    window_start_unix_ms BIGINT NOT NULL,
    -- Granted plus overrun charged in the window (parallel: 0, quota_holders has the slots).
    total BIGINT NOT NULL,
    -- The grant of the last ask, so that one statement returns it with the new total.
    last_grant BIGINT NOT NULL,
    updated_unix_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, id, kind, window_start_unix_ms)
);
-- Pruning of old windows.
CREATE INDEX quota_counters_window ON quota_counters (window_start_unix_ms);

CREATE TABLE quota_holders (
    scope TEXT NOT NULL,
    id TEXT NOT NULL,
    -- "<replica id>/<stream id>": one filter stream on one control-plane process.
    holder TEXT NOT NULL,
    -- Parallel slots this holder holds.
    held BIGINT NOT NULL,
    -- Unix ms after which the slots no longer count (a crashed replica's stream).
    expires_unix_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, id, holder)
);
-- Release and refresh by holder.
CREATE INDEX quota_holders_holder ON quota_holders (holder);
-- Pruning of expired holders.
CREATE INDEX quota_holders_expiry ON quota_holders (expires_unix_ms);
