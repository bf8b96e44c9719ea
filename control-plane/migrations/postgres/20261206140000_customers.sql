-- Customers (LiteLLM's end users, /customer/*): the request's `user` field names one. A
-- customer with max_budget or soft_budget becomes an END_USER budget of its own in the
-- snapshot's settings; its spend and window are spend_totals' (scope 'end_user'), which
-- exist whether or not the customer is stored. default_model is stored, not used yet.
CREATE TABLE end_users (
    user_id TEXT PRIMARY KEY NOT NULL,
    alias TEXT,
    default_model TEXT,
    metadata TEXT NOT NULL,
    max_budget DOUBLE PRECISION,
    soft_budget DOUBLE PRECISION,
    budget_duration TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
