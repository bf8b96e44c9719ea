-- Budget alerts: the window (its reset_at) whose crossing of the soft / max budget was last
-- announced, so that of several replicas exactly one sends each alert, once per window
-- (-1: none yet).
ALTER TABLE spend_totals ADD COLUMN soft_alerted_reset_at BIGINT NOT NULL DEFAULT -1;
ALTER TABLE spend_totals ADD COLUMN max_alerted_reset_at BIGINT NOT NULL DEFAULT -1;
