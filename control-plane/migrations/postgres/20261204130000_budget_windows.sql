-- Budget windows: the length of a scope's window, so the budget clock can start the next one
-- when reset_at passes (0: the spend never resets).
ALTER TABLE spend_totals ADD COLUMN budget_duration_ms BIGINT NOT NULL DEFAULT 0;
