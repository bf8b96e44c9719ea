//! Storage of customers (LiteLLM's end users, `/customer/*`): one `end_users` row each. Like
//! every management write, each change is one transaction that bumps the version first and
//! announces it last, so the snapshot (whose settings carry the customers' budgets) follows.

use sqlx::Row;

use super::{
    now_unix_ms, to_i64, to_u64, Backend, BudgetFields, Missing, Pool, Store, StoreError, Taken,
    CHANGES_CHANNEL,
};

/// A customer: the end user a request's `user` field names.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerRow {
    /// Primary key: the request's `user` field.
    pub user_id: String,
    /// Human-friendly name.
    pub alias: Option<String>,
    /// LiteLLM's `default_model` (stored and shown; Tollgate routes by the request's model).
    pub default_model: Option<String>,
    /// Free-form JSON object.
    pub metadata: serde_json::Value,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
    /// The customer's own budget (else `max_end_user_budget` applies).
    pub budget: BudgetFields,
}

const CUSTOMER_COLUMNS: &str = "user_id, alias, default_model, metadata, max_budget, \
     soft_budget, budget_duration, created_at, updated_at";

macro_rules! decode_customer {
    ($row:expr) => {{
        let row = $row;
        let metadata: String = row.try_get("metadata")?;
        CustomerRow {
            user_id: row.try_get("user_id")?,
            alias: row.try_get("alias")?,
            default_model: row.try_get("default_model")?,
            metadata: serde_json::from_str(&metadata)
                .unwrap_or_else(|_| serde_json::Value::Object(Default::default())),
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            budget: decode_budget!(row),
        }
    }};
}

impl Store {
    /// Creates a customer and starts its budget window. Fails on a taken id.
    pub async fn insert_customer(&self, customer: &CustomerRow) -> Result<u64, StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let version = bump_version!(tx, now_unix_ms());
            let taken = sqlx::query("SELECT user_id FROM end_users WHERE user_id = $1")
                .bind(customer.user_id.clone())
                .fetch_optional(&mut *tx)
                .await?;
            if taken.is_some() {
                return Err(StoreError::AlreadyExists(Taken::Customer(customer.user_id.clone())));
            }
            sqlx::query(
                "INSERT INTO end_users (user_id, alias, default_model, metadata, max_budget, \
                 soft_budget, budget_duration, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(customer.user_id.clone())
            .bind(customer.alias.clone())
            .bind(customer.default_model.clone())
            .bind(customer.metadata.to_string())
            .bind(customer.budget.max_budget)
            .bind(customer.budget.soft_budget)
            .bind(customer.budget.budget_duration.clone())
            .bind(customer.created_at)
            .bind(customer.updated_at)
            .execute(&mut *tx)
            .await?;
            // The end user may have spent already (its spend_totals row exists from its first
            // priced request); the window starts now either way.
            if customer.budget.is_set() {
                set_budget_window!(tx, "end_user", customer.user_id, &customer.budget, customer.created_at);
            }
            notify_change!(self, tx, version);
            tx.commit().await?;
            Ok(version)
        })
    }

    /// Replaces a customer's fields (`created_at` is kept) and starts or keeps its budget
    /// window. Fails on an unknown customer.
    pub async fn update_customer(
        &self,
        customer: &CustomerRow,
    ) -> Result<(CustomerRow, u64), StoreError> {
        let now = to_i64(now_unix_ms());
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let version = bump_version!(tx, now_unix_ms());
            let affected = sqlx::query(
                "UPDATE end_users SET alias = $1, default_model = $2, metadata = $3, \
                 max_budget = $4, soft_budget = $5, budget_duration = $6, updated_at = $7 \
                 WHERE user_id = $8",
            )
            .bind(customer.alias.clone())
            .bind(customer.default_model.clone())
            .bind(customer.metadata.to_string())
            .bind(customer.budget.max_budget)
            .bind(customer.budget.soft_budget)
            .bind(customer.budget.budget_duration.clone())
            .bind(now)
            .bind(customer.user_id.clone())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if affected == 0 {
                return Err(StoreError::NotFound(Missing::Customer(customer.user_id.clone())));
            }
            set_budget_window!(tx, "end_user", customer.user_id, &customer.budget, now);
            notify_change!(self, tx, version);
            tx.commit().await?;
            let mut updated = customer.clone();
            updated.updated_at = now;
            Ok((updated, version))
        })
    }

    /// Deletes the customers `user_ids`, all or nothing (an unknown one fails the whole
    /// batch, naming its position). Their spend stays (an end user keeps spending, under
    /// `max_end_user_budget`), but no longer resets: a window was the customer's.
    pub async fn delete_customers(&self, user_ids: &[String]) -> Result<u64, StoreError> {
        let now = to_i64(now_unix_ms());
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let version = bump_version!(tx, now_unix_ms());
            for (index, user_id) in user_ids.iter().enumerate() {
                let deleted = sqlx::query("DELETE FROM end_users WHERE user_id = $1")
                    .bind(user_id.clone())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if deleted == 0 {
                    return Err(StoreError::NotFound(Missing::CustomerInBatch {
                        index,
                        user_id: user_id.clone(),
                    }));
                }
                set_budget_window!(tx, "end_user", user_id, &BudgetFields::default(), now);
            }
            notify_change!(self, tx, version);
            tx.commit().await?;
            Ok(version)
        })
    }

    /// One customer.
    pub async fn customer(&self, user_id: &str) -> Result<Option<CustomerRow>, StoreError> {
        let sql = format!("SELECT {CUSTOMER_COLUMNS} FROM end_users WHERE user_id = $1");
        with_pool!(self, pool => {
            match sqlx::query(&sql).bind(user_id.to_string()).fetch_optional(pool).await? {
                Some(row) => Ok(Some(decode_customer!(&row))),
                None => Ok(None),
            }
        })
    }

    /// Every customer, by id.
    pub async fn customers(&self) -> Result<Vec<CustomerRow>, StoreError> {
        let sql = format!("SELECT {CUSTOMER_COLUMNS} FROM end_users ORDER BY user_id");
        with_pool!(self, pool => {
            let rows = sqlx::query(&sql).fetch_all(pool).await?;
            let mut customers = Vec::with_capacity(rows.len());
            for row in &rows {
                customers.push(decode_customer!(row));
            }
            Ok(customers)
        })
    }
}
