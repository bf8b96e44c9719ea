//! The LiteLLM-compatible HTTP/JSON management API (`/key/generate`, `/model/new`, ...),
//! the HTTP face of [`crate::manage::Manager`]. Paths, methods, request and response
//! fields follow LiteLLM's proxy; errors are `{"error":{"message","type","param","code"}}`
//! with 400 (bad field, named), 401, 403, 404, 409 or 500, never 422.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

use crate::manage::{
    iso8601, model_entry_json, model_max_budget_json, ApiError, BudgetChange, CustomerCreate,
    CustomerUpdate, ErrorKind, KeyGenerate, KeyUpdate, Manager, ModelBudget, RateLimitChange,
    TeamCreate, TeamUpdate, UserCreate, UserUpdate,
};
use crate::store::{
    BudgetFields, CustomerRow, KeyRow, NewMember, RateLimitFields, SpendScope, StoredDeployment,
    TeamRow, UserRow,
};

/// Path prefixes Envoy sends to this API on the gateway port.
pub const ROUTED_PREFIXES: &[&str] = &[
    "/key/",
    "/model/",
    "/user/",
    "/team/",
    "/organization/",
    "/spend/",
    "/global/",
    "/customer/",
    "/end_user/",
];

fn status_of(kind: ErrorKind) -> (StatusCode, &'static str) {
    match kind {
        ErrorKind::InvalidArgument | ErrorKind::FailedPrecondition => {
            (StatusCode::BAD_REQUEST, "bad_request_error")
        }
        ErrorKind::Unauthenticated => (StatusCode::UNAUTHORIZED, "auth_error"),
        ErrorKind::PermissionDenied => (StatusCode::FORBIDDEN, "permission_error"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found_error"),
        ErrorKind::AlreadyExists => (StatusCode::CONFLICT, "conflict_error"),
        ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal_server_error"),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = status_of(self.kind);
        let body = json!({
            "error": {
                "message": self.message,
                "type": kind,
                "param": self.param,
                "code": status.as_u16().to_string(),
            }
        });
        (status, Json(body)).into_response()
    }
}

/// The credential of a request: `Authorization: Bearer`, or LiteLLM's
/// `x-litellm-api-key`, or `x-api-key`.
fn credential(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
    {
        let value = value.trim();
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .unwrap_or(value);
        return Some(token.trim().to_string());
    }
    ["x-litellm-api-key", "x-api-key"].iter().find_map(|name| {
        headers
            .get(*name)
            .and_then(|value| value.to_str().ok())
            .map(|value| value.trim().to_string())
    })
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A JSON request body with typed field access whose errors name the field.
struct Body(Map<String, Value>);

impl Body {
    fn parse(bytes: &[u8]) -> Result<Body, ApiError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::invalid("body", "a JSON object is required"));
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(Body(map)),
            Ok(other) => Err(ApiError::invalid(
                "body",
                format!("expected a JSON object, got {}", type_name(&other)),
            )),
            Err(error) => Err(ApiError::invalid("body", format!("invalid JSON: {error}"))),
        }
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|value| !value.is_null())
    }

    fn string(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(ApiError::invalid(
                name,
                format!("must be a string, got {}", type_name(other)),
            )),
        }
    }

    fn required(&self, name: &str) -> Result<String, ApiError> {
        match self.string(name)? {
            Some(text) if !text.trim().is_empty() => Ok(text),
            Some(_) => Err(ApiError::invalid(name, "must not be empty")),
            None => Err(ApiError::invalid(name, "required")),
        }
    }

    /// Absent: `None`; `null`: `Some(None)`; a string: `Some(Some(..))`.
    fn nullable(&self, name: &str) -> Result<Option<Option<String>>, ApiError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(_) => Ok(Some(self.string(name)?)),
        }
    }

    fn list(&self, name: &str) -> Result<Option<Vec<String>>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(index, item)| match item {
                    Value::String(text) => Ok(text.clone()),
                    other => Err(ApiError::invalid(
                        &format!("{name}[{index}]"),
                        format!("must be a string, got {}", type_name(other)),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(ApiError::invalid(
                name,
                format!("must be a list of strings, got {}", type_name(other)),
            )),
        }
    }

    fn boolean(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(value)) => Ok(Some(*value)),
            Some(other) => Err(ApiError::invalid(
                name,
                format!("must be a boolean, got {}", type_name(other)),
            )),
        }
    }

    fn object(&self, name: &str) -> Result<Option<Value>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(value @ Value::Object(_)) => Ok(Some(value.clone())),
            Some(other) => Err(ApiError::invalid(
                name,
                format!("must be an object, got {}", type_name(other)),
            )),
        }
    }

    /// A LiteLLM duration: a string ("30d") or a number of seconds.
    fn duration(&self, name: &str) -> Result<Option<Option<String>>, ApiError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(Value::Number(number)) => match number.as_u64() {
                Some(seconds) => Ok(Some(Some(format!("{seconds}s")))),
                None => Err(ApiError::invalid(name, "must be a whole number of seconds")),
            },
            Some(_) => Ok(Some(self.string(name)?)),
        }
    }
}

impl Body {
    /// Absent: `None`; `null`: `Some(None)`; a number: `Some(Some(..))`.
    fn nullable_number(&self, name: &str) -> Result<Option<Option<f64>>, ApiError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(Value::Number(number)) => Ok(Some(number.as_f64())),
            Some(other) => Err(ApiError::invalid(
                name,
                format!("must be a number, got {}", type_name(other)),
            )),
        }
    }

    /// `max_budget`, `soft_budget`, `budget_duration`.
    fn budget(&self) -> Result<BudgetChange, ApiError> {
        Ok(BudgetChange {
            max_budget: self.nullable_number("max_budget")?,
            soft_budget: self.nullable_number("soft_budget")?,
            budget_duration: self.duration("budget_duration")?,
        })
    }

    /// A rate limit: absent `None`; `null` `Some(None)`; a whole number >= 0
    /// `Some(Some(..))`.
    fn nullable_limit(&self, name: &str) -> Result<Option<Option<u64>>, ApiError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(value) => limit_value(name, value).map(|limit| Some(Some(limit))),
        }
    }

    /// `rpm_limit`, `tpm_limit`, `max_parallel_requests`.
    fn limits(&self) -> Result<RateLimitChange, ApiError> {
        Ok(RateLimitChange {
            rpm_limit: self.nullable_limit("rpm_limit")?,
            tpm_limit: self.nullable_limit("tpm_limit")?,
            max_parallel_requests: self.nullable_limit("max_parallel_requests")?,
        })
    }

    /// A per-model object (`{"gpt-4o": ...}`) of `what` (named in the error); `null`:
    /// `Some(None)`.
    #[allow(clippy::type_complexity)]
    fn model_map(
        &self,
        name: &str,
        what: &str,
    ) -> Result<Option<Option<&Map<String, Value>>>, ApiError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(Value::Object(entries)) => Ok(Some(Some(entries))),
            Some(other) => Err(ApiError::invalid(
                name,
                format!(
                    "must be an object of model names to {what}, got {}",
                    type_name(other)
                ),
            )),
        }
    }

    /// `model_rpm_limit` / `model_tpm_limit`: `{"gpt-4o": 10}`; `null`: `Some(None)`.
    #[allow(clippy::type_complexity)]
    fn model_limits(&self, name: &str) -> Result<Option<Option<BTreeMap<String, u64>>>, ApiError> {
        let entries = match self.model_map(name, "limits")? {
            None => return Ok(None),
            Some(None) => return Ok(Some(None)),
            Some(Some(entries)) => entries,
        };
        let mut limits = BTreeMap::new();
        for (model, value) in entries {
            limits.insert(
                model.clone(),
                limit_value(&format!("{name}.{model}"), value)?,
            );
        }
        Ok(Some(Some(limits)))
    }

    /// `model_max_budget` in either LiteLLM shape: `{"gpt-4o": 0.5}` or
    /// `{"gpt-4o": {"budget_limit": 0.5, "time_period": "1d"}}`; `null`: `Some(None)`.
    #[allow(clippy::type_complexity)]
    fn model_budgets(
        &self,
        name: &str,
    ) -> Result<Option<Option<BTreeMap<String, ModelBudget>>>, ApiError> {
        let entries = match self.model_map(name, "budgets")? {
            None => return Ok(None),
            Some(None) => return Ok(Some(None)),
            Some(Some(entries)) => entries,
        };
        let mut budgets = BTreeMap::new();
        for (model, entry) in entries {
            let path = format!("{name}.{model}");
            let budget = match entry {
                Value::Number(number) => ModelBudget {
                    budget_limit: number.as_f64().unwrap_or(f64::NAN),
                    time_period: None,
                    flat: true,
                },
                Value::Object(fields) => {
                    let fields = Body(fields.clone());
                    let budget_limit = match fields.get("budget_limit") {
                        Some(Value::Number(number)) => number.as_f64().unwrap_or(f64::NAN),
                        Some(other) => {
                            return Err(ApiError::invalid(
                                &format!("{path}.budget_limit"),
                                format!("must be a number, got {}", type_name(other)),
                            ))
                        }
                        None => {
                            return Err(ApiError::invalid(
                                &format!("{path}.budget_limit"),
                                "required",
                            ))
                        }
                    };
                    let time_period = fields
                        .duration("time_period")
                        .map_err(|error| prefix(&path, error))?
                        .flatten();
                    ModelBudget {
                        budget_limit,
                        time_period,
                        flat: false,
                    }
                }
                other => {
                    return Err(ApiError::invalid(
                        &path,
                        format!(
                            "must be a number or {{\"budget_limit\", \"time_period\"}}, got {}",
                            type_name(other)
                        ),
                    ))
                }
            };
            budgets.insert(model.clone(), budget);
        }
        Ok(Some(Some(budgets)))
    }
}

/// A rate limit's value: a whole number, 0 or more (`10.0` is 10, as JSON does not tell
/// them apart).
fn limit_value(param: &str, value: &Value) -> Result<u64, ApiError> {
    let number = match value {
        Value::Number(number) => number,
        other => {
            return Err(ApiError::invalid(
                param,
                format!(
                    "must be a whole number, 0 or more, got {}",
                    type_name(other)
                ),
            ))
        }
    };
    let whole = number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|value| *value >= 0.0 && value.fract() == 0.0 && *value < 9.2e18)
            // Checked: whole, non-negative and below 2^63.
            .map(|value| value as u64)
    });
    match whole {
        Some(limit) => crate::manage::check_limit(param, limit),
        None => Err(ApiError::invalid(
            param,
            format!("must be a whole number, 0 or more, got {number}"),
        )),
    }
}

/// Adds `rpm_limit`, `tpm_limit`, `max_parallel_requests` (null when unset, as LiteLLM).
fn add_limits(map: &mut Map<String, Value>, limits: &RateLimitFields) {
    map.insert("rpm_limit".into(), json!(limits.rpm));
    map.insert("tpm_limit".into(), json!(limits.tpm));
    map.insert(
        "max_parallel_requests".into(),
        json!(limits.max_parallel_requests),
    );
}

/// A model -> limit map as LiteLLM shows it: null when empty.
fn model_limits_json(limits: &BTreeMap<String, u64>) -> Value {
    if limits.is_empty() {
        Value::Null
    } else {
        json!(limits)
    }
}

fn members_of(param: &str, value: &Value) -> Result<Vec<NewMember>, ApiError> {
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        Value::Object(_) => vec![value],
        other => {
            return Err(ApiError::invalid(
                param,
                format!(
                    "must be a member object or a list of them, got {}",
                    type_name(other)
                ),
            ))
        }
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let path = format!("{param}[{index}]");
            let Value::Object(map) = item else {
                return Err(ApiError::invalid(
                    &path,
                    format!("must be an object, got {}", type_name(item)),
                ));
            };
            let body = Body(map.clone());
            Ok(NewMember {
                user_id: body.string("user_id").map_err(|e| prefix(&path, e))?,
                user_email: body.string("user_email").map_err(|e| prefix(&path, e))?,
                role: body
                    .string("role")
                    .map_err(|e| prefix(&path, e))?
                    .unwrap_or_else(|| "user".into()),
            })
        })
        .collect()
}

fn prefix(path: &str, error: ApiError) -> ApiError {
    let param = error.param.clone().unwrap_or_default();
    let full = format!("{path}.{param}");
    let message = error
        .message
        .strip_prefix(&format!("{param}: "))
        .unwrap_or(&error.message)
        .to_string();
    ApiError::invalid(&full, message)
}

fn time(ms: i64) -> Value {
    Value::String(iso8601(ms))
}

fn key_json(key: &KeyRow) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("token".into(), key.token.clone().into());
    map.insert("key_name".into(), key.key_name.clone().into());
    map.insert("key_alias".into(), json!(key.key_alias));
    map.insert("user_id".into(), json!(key.user_id));
    map.insert("team_id".into(), json!(key.team_id));
    map.insert("models".into(), json!(key.models));
    map.insert("blocked".into(), key.blocked.into());
    map.insert("expires".into(), key.expires_ms.map_or(Value::Null, time));
    map.insert("metadata".into(), key.metadata.clone());
    map.insert("created_at".into(), time(key.created_at));
    map.insert("updated_at".into(), time(key.updated_at));
    map
}

/// Adds the budget fields of a row and its window's spend and end, read in one go from its
/// `spend_totals` row (`scope`/`scope_id`; no row: nothing spent, no window).
async fn add_budget(
    m: &Manager,
    map: &mut Map<String, Value>,
    fields: &BudgetFields,
    scope: SpendScope,
    scope_id: &str,
) -> Result<(), ApiError> {
    let (spend, reset_at) = m
        .hub()
        .store()
        .spend_total(scope, scope_id)
        .await?
        .unwrap_or((0.0, 0));
    let reset_at = i64::try_from(reset_at)
        .ok()
        .filter(|reset_at| *reset_at > 0);
    map.insert("spend".into(), json!(spend));
    map.insert("max_budget".into(), json!(fields.max_budget));
    // What is left of the window's budget (0 once spent, also when overshot); null without
    // a budget.
    map.insert(
        "remaining_budget".into(),
        json!(fields.max_budget.map(|max| (max - spend).max(0.0))),
    );
    map.insert("soft_budget".into(), json!(fields.soft_budget));
    map.insert("budget_duration".into(), json!(fields.budget_duration));
    map.insert("budget_reset_at".into(), reset_at.map_or(Value::Null, time));
    Ok(())
}

/// A key as the API shows it, with its budget.
async fn key_object(m: &Manager, key: &KeyRow) -> Result<Map<String, Value>, ApiError> {
    let mut map = key_json(key);
    add_budget(m, &mut map, &key.budget, SpendScope::Key, &key.token).await?;
    map.insert("model_max_budget".into(), model_max_budget_json(key));
    add_limits(&mut map, &key.limits);
    map.insert(
        "model_rpm_limit".into(),
        model_limits_json(&key.model_rpm_limit),
    );
    map.insert(
        "model_tpm_limit".into(),
        model_limits_json(&key.model_tpm_limit),
    );
    Ok(map)
}

async fn key_values(m: &Manager, keys: &[KeyRow]) -> Result<Vec<Value>, ApiError> {
    let mut values = Vec::with_capacity(keys.len());
    for key in keys {
        values.push(Value::Object(key_object(m, key).await?));
    }
    Ok(values)
}

async fn user_object(
    m: &Manager,
    user: &UserRow,
    teams: &[String],
) -> Result<Map<String, Value>, ApiError> {
    let mut map = user_json(user, teams);
    add_budget(m, &mut map, &user.budget, SpendScope::User, &user.user_id).await?;
    add_limits(&mut map, &user.limits);
    Ok(map)
}

async fn team_value(m: &Manager, team: &TeamRow) -> Result<Value, ApiError> {
    let mut value = team_json(team);
    if let Value::Object(map) = &mut value {
        add_budget(m, map, &team.budget, SpendScope::Team, &team.team_id).await?;
        add_limits(map, &team.limits);
    }
    Ok(value)
}

async fn generated_json(m: &Manager, clear: &str, key: &KeyRow) -> Result<Value, ApiError> {
    let mut map = key_object(m, key).await?;
    map.insert("key".into(), clear.into());
    map.insert("token_id".into(), key.token.clone().into());
    Ok(Value::Object(map))
}

fn user_json(user: &UserRow, teams: &[String]) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("user_id".into(), user.user_id.clone().into());
    map.insert("user_email".into(), json!(user.user_email));
    map.insert("user_role".into(), user.user_role.clone().into());
    map.insert("models".into(), json!(user.models));
    map.insert("metadata".into(), user.metadata.clone());
    map.insert("teams".into(), json!(teams));
    map.insert("created_at".into(), time(user.created_at));
    map.insert("updated_at".into(), time(user.updated_at));
    map
}

fn team_json(team: &TeamRow) -> Value {
    json!({
        "team_id": team.team_id,
        "team_alias": team.team_alias,
        "models": team.models,
        "metadata": team.metadata,
        "blocked": team.blocked,
        "members_with_roles": team.members.iter().map(|member| json!({
            "user_id": member.user_id,
            "user_email": member.user_email,
            "role": member.role,
        })).collect::<Vec<_>>(),
        "created_at": iso8601(team.created_at),
        "updated_at": iso8601(team.updated_at),
    })
}

fn model_json(stored: &StoredDeployment) -> Value {
    let mut entry = model_entry_json(&stored.record, false);
    entry["model_id"] = Value::String(stored.record.id.clone());
    entry["created_at"] = time(stored.created_at_ms);
    entry["updated_at"] = time(stored.updated_at_ms);
    entry
}

type Shared = Arc<Manager>;

/// Authenticates, then runs `work`; turns its result into a response.
pub(crate) async fn handle<F, Fut>(manager: &Manager, headers: &HeaderMap, work: F) -> Response
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Value, ApiError>>,
{
    if let Err(error) = manager.authorize(credential(headers).as_deref()).await {
        return error.into_response();
    }
    match work().await {
        Ok(body) => Json(body).into_response(),
        Err(error) => error.into_response(),
    }
}

/// The query string as a map; a malformed one is a 400 about `query`.
pub(crate) fn query_map(
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<HashMap<String, String>, ApiError> {
    query
        .map(|Query(map)| map)
        .map_err(|error| ApiError::invalid("query", error.body_text()))
}

async fn key_generate(State(m): State<Shared>, headers: HeaderMap, bytes: Bytes) -> Response {
    handle(&m, &headers, || async {
        let body = Body::parse(&bytes)?;
        let request = KeyGenerate {
            key_alias: body.string("key_alias")?,
            user_id: body.string("user_id")?,
            team_id: body.string("team_id")?,
            models: body.list("models")?.unwrap_or_default(),
            duration: body.duration("duration")?.flatten(),
            metadata: body.object("metadata")?,
            key: body.string("key")?,
            blocked: body.boolean("blocked")?.unwrap_or(false),
            budget: body.budget()?,
            model_max_budget: body.model_budgets("model_max_budget")?.flatten(),
            limits: body.limits()?,
            model_rpm_limit: body.model_limits("model_rpm_limit")?.flatten(),
            model_tpm_limit: body.model_limits("model_tpm_limit")?.flatten(),
        };
        let (clear, row) = m.generate_key(request).await?;
        generated_json(&m, &clear, &row).await
    })
    .await
}

async fn key_info(
    State(m): State<Shared>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    handle(&m, &headers, || async {
        let query = query_map(query)?;
        // LiteLLM answers for the calling key when none is given.
        let key = match query.get("key").filter(|k| !k.is_empty()) {
            Some(key) => key.clone(),
            None => credential(&headers).unwrap_or_default(),
        };
        let row = m.key_info(&key).await?;
        Ok(json!({ "key": key, "info": Value::Object(key_object(&m, &row).await?) }))
    })
    .await
}

async fn key_list(
    State(m): State<Shared>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    handle(&m, &headers, || async {
        let query = query_map(query)?;
        let number = |name: &str, default: usize| -> Result<usize, ApiError> {
            match query.get(name) {
                None => Ok(default),
                Some(text) => match text.parse::<usize>() {
                    Ok(value) if value >= 1 => Ok(value),
                    _ => Err(ApiError::invalid(name, "must be a positive integer")),
                },
            }
        };
        let page = number("page", 1)?;
        let size = number("size", 10)?;
        let full = query
            .get("return_full_object")
            .is_some_and(|value| value == "true");
        let keys = m
            .list_keys(
                query.get("user_id").map(String::as_str),
                query.get("team_id").map(String::as_str),
                query.get("key_alias").map(String::as_str),
            )
            .await?;
        let total = keys.len();
        let page_keys: Vec<KeyRow> = keys
            .iter()
            .skip((page - 1).saturating_mul(size))
            .take(size)
            .cloned()
            .collect();
        let listed: Vec<Value> = if full {
            key_values(&m, &page_keys).await?
        } else {
            page_keys
                .iter()
                .map(|key| Value::String(key.token.clone()))
                .collect()
        };
        Ok(json!({
            "keys": listed,
            "total_count": total,
            "current_page": page,
            "total_pages": total.div_ceil(size),
        }))
    })
    .await
}

async fn key_update(State(m): State<Shared>, headers: HeaderMap, bytes: Bytes) -> Response {
    handle(&m, &headers, || async {
        let body = Body::parse(&bytes)?;
        let key = body.required("key")?;
        let request = KeyUpdate {
            key: key.clone(),
            key_alias: body.nullable("key_alias")?,
            user_id: body.nullable("user_id")?,
            team_id: body.nullable("team_id")?,
            models: body.list("models")?,
            duration: body.duration("duration")?,
            metadata: body.object("metadata")?,
            blocked: body.boolean("blocked")?,
            budget: body.budget()?,
            model_max_budget: body.model_budgets("model_max_budget")?,
            limits: body.limits()?,
            model_rpm_limit: body.model_limits("model_rpm_limit")?,
            model_tpm_limit: body.model_limits("model_tpm_limit")?,
        };
        let row = m.update_key(request).await?;
        let mut map = key_object(&m, &row).await?;
        map.insert("key".into(), key.into());
        Ok(Value::Object(map))
    })
    .await
}

async fn regenerate(
    m: &Manager,
    bytes: &Bytes,
    path_key: Option<String>,
) -> Result<Value, ApiError> {
    let body = if bytes.iter().all(u8::is_ascii_whitespace) && path_key.is_some() {
        Body(Map::new())
    } else {
        Body::parse(bytes)?
    };
    let key = match path_key {
        Some(key) => key,
        None => body.required("key")?,
    };
    let (clear, row) = m.regenerate_key(&key, body.string("new_key")?).await?;
    generated_json(m, &clear, &row).await
}

async fn key_regenerate(State(m): State<Shared>, headers: HeaderMap, bytes: Bytes) -> Response {
    handle(&m, &headers, || regenerate(&m, &bytes, None)).await
}

async fn key_regenerate_path(
    State(m): State<Shared>,
    Path(key): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    handle(&m, &headers, || regenerate(&m, &bytes, Some(key))).await
}

async fn key_delete(State(m): State<Shared>, headers: HeaderMap, bytes: Bytes) -> Response {
    handle(&m, &headers, || async {
        let body = Body::parse(&bytes)?;
        let keys = body.list("keys")?.unwrap_or_default();
        let aliases = body.list("key_aliases")?.unwrap_or_default();
        m.delete_keys(&keys, &aliases).await?;
        let mut deleted = keys;
        deleted.extend(aliases);
        Ok(json!({ "deleted_keys": deleted }))
    })
    .await
}

async fn block(m: &Manager, bytes: &Bytes, blocked: bool) -> Result<Value, ApiError> {
    let body = Body::parse(bytes)?;
    let key = body.required("key")?;
    let row = m.set_blocked(&key, blocked).await?;
    Ok(Value::Object(key_object(m, &row).await?))
}

async fn key_block(State(m): State<Shared>, headers: HeaderMap, bytes: Bytes) -> Response {
    handle(&m, &headers, || block(&m, &bytes, true)).await
}

async fn key_unblock(State(m): State<Shared>, headers: HeaderMap, bytes: Bytes) -> Response {
    handle(&m, &headers, || block(&m, &bytes, false)).await
}

async fn user_new(State(m): State<Shared>, headers: HeaderMap, bytes: Bytes) -> Response {
    handle(&m, &headers, || async {
        let body = Body::parse(&bytes)?;
        let request = UserCreate {
            user_id: body.string("user_id")?,
            user_email: body.string("user_email")?,
            user_role: body.string("user_role")?,
            models: body.list("models")?.unwrap_or_default(),
            metadata: body.object("metadata")?,
            auto_create_key: body.boolean("auto_create_key")?.unwrap_or(true),
            key_alias: body.string("key_alias")?,
            duration: body.duration("duration")?.flatten(),
            budget: body.budget()?,
            limits: body.limits()?,
        };
        let (user, key) = m.create_user(request).await?;
        let mut map = user_object(&m, &user, &[]).await?;
        match key {
            Some((clear, row)) => {
                map.insert("key".into(), clear.into());
                map.insert("token".into(), row.token.clone().into());
                map.insert("key_name".into(), row.key_name.clone().into());
                map.insert("key_alias".into(), json!(row.key_alias));
                map.insert("expires".into(), row.expires_ms.map_or(Value::Null, time));
            }
            None => {
                map.insert("key".into(), Value::Null);
            }
        }
        Ok(Value::Object(map))
    })
    .await
}

async fn user_info(
    State(m): State<Shared>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    handle(&m, &headers, || async {
        let query = query_map(query)?;
        let user_id = query.get("user_id").cloned().unwrap_or_default();
        let details = m.user_info(&user_id).await?;
        let mut teams = Vec::new();
        for team_id in &details.teams {
            let (team, _) = m.team_info(team_id).await?;
            teams.push(team_value(&m, &team).await?);
        }
        Ok(json!({
            "user_id": details.user.user_id,
            "user_info": Value::Object(user_object(&m, &details.user, &details.teams).await?),
            "keys": key_values(&m, &details.keys).await?,
            "teams": teams,
        }))
    })
    .await
}

async fn team_new(State(m): State<Shared>, headers: HeaderMap, bytes: Bytes) -> Response {
    handle(&m, &headers, || async {
        let body = Body::parse(&bytes)?;
        let members = match body.get("members_with_roles") {
            Some(Value::Array(_)) => {
                members_of("members_with_roles", &body.0["members_with_roles"])?
            }
            Some(other) => {
                return Err(ApiError::invalid(
                    "members_with_roles",
                    format!("must be a list, got {}", type_name(other)),
                ))
            }
            None => Vec::new(),
        };
        let request = TeamCreate {
            team_id: body.string("team_id")?,
            team_alias: body.string("team_alias")?,
            models: body.list("models")?.unwrap_or_default(),
            metadata: body.object("metadata")?,
            members,
            budget: body.budget()?,
            limits: body.limits()?,
        };
        team_value(&m, &m.create_team(request).await?).await
    })
    .await
}

async fn user_update(State(m): State<Shared>, headers: HeaderMap, bytes: Bytes) -> Response {
    handle(&m, &headers, || async {
        let body = Body::parse(&bytes)?;
        let request = UserUpdate {
            user_id: body.required("user_id")?,
            user_email: body.nullable("user_email")?,
            user_role: body.string("user_role")?,
            models: body.list("models")?,
            metadata: body.object("metadata")?,
            budget: body.budget()?,
            limits: body.limits()?,
        };
        let user = m.update_user(request).await?;
        let teams = m.user_info(&user.user_id).await?.teams;
        Ok(Value::Object(user_object(&m, &user, &teams).await?))
    })
    .await
}

async fn team_update(State(m): State<Shared>, headers: HeaderMap, bytes: Bytes) -> Response {
    handle(&m, &headers, || async {
        let body = Body::parse(&bytes)?;
        let request = TeamUpdate {
            team_id: body.required("team_id")?,
            team_alias: body.nullable("team_alias")?,
            models: body.list("models")?,
            metadata: body.object("metadata")?,
            blocked: body.boolean("blocked")?,
            budget: body.budget()?,
            limits: body.limits()?,
        };
        team_value(&m, &m.update_team(request).await?).await
    })
    .await
}

async fn team_info(
    State(m): State<Shared>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    handle(&m, &headers, || async {
        let query = query_map(query)?;
        let team_id = query.get("team_id").cloned().unwrap_or_default();
        let (team, keys) = m.team_info(&team_id).await?;
        Ok(json!({
            "team_id": team.team_id,
            "team_info": team_value(&m, &team).await?,
            "keys": key_values(&m, &keys).await?,
            "team_memberships": [],
        }))
    })
    .await
}

async fn team_member_add(State(m): State<Shared>, headers: HeaderMap, bytes: Bytes) -> Response {
    handle(&m, &headers, || async {
        let body = Body::parse(&bytes)?;
        let team_id = body.required("team_id")?;
        let members = match body.get("member") {
            Some(value) => members_of("member", value)?,
            None => return Err(ApiError::invalid("member", "required")),
        };
        let team = m.add_team_members(&team_id, &members).await?;
        let mut value = team_value(&m, &team).await?;
        let added: Vec<Value> = team
            .members
            .iter()
            .filter(|member| {
                members.iter().any(|new| {
                    new.user_id.as_deref() == Some(member.user_id.as_str())
                        || (new.user_id.is_none()
                            && new.user_email.is_some()
                            && new.user_email == member.user_email)
                })
            })
            .map(|member| json!({"user_id": member.user_id, "user_email": member.user_email}))
            .collect();
        value["updated_users"] = Value::Array(added);
        value["updated_team_memberships"] = json!([]);
        Ok(value)
    })
    .await
}

async fn model_new(State(m): State<Shared>, headers: HeaderMap, bytes: Bytes) -> Response {
    handle(&m, &headers, || async {
        let body = Body::parse(&bytes)?;
        body.required("model_name")?;
        if body.get("litellm_params").is_none() {
            return Err(ApiError::invalid("litellm_params", "required"));
        }
        body.object("litellm_params")?;
        body.object("model_info")?;
        let created = m.create_model(&Value::Object(body.0)).await?;
        Ok(model_json(&created))
    })
    .await
}

async fn model_info(
    State(m): State<Shared>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    handle(&m, &headers, || async {
        let query = query_map(query)?;
        let data: Vec<Value> = match query.get("litellm_model_id").filter(|id| !id.is_empty()) {
            Some(id) => vec![model_json(&m.get_model(id).await?)],
            None => m.list_models().await?.iter().map(model_json).collect(),
        };
        Ok(json!({ "data": data }))
    })
    .await
}

async fn update_model(
    m: &Manager,
    bytes: &Bytes,
    path_id: Option<String>,
) -> Result<Value, ApiError> {
    let body = Body::parse(bytes)?;
    let id = match path_id {
        Some(id) => id,
        None => {
            let info = body.object("model_info")?;
            match info.as_ref().and_then(|info| info.get("id")) {
                Some(Value::String(id)) if !id.is_empty() => id.clone(),
                Some(other) if !other.is_null() => {
                    return Err(ApiError::invalid("model_info.id", "must be a string"))
                }
                _ => return Err(ApiError::invalid("model_info.id", "required")),
            }
        }
    };
    if let Some(name) = body.string("model_name")? {
        if name.trim().is_empty() {
            return Err(ApiError::invalid("model_name", "must not be empty"));
        }
    }
    body.object("litellm_params")?;
    let updated = m.update_model(&id, &Value::Object(body.0)).await?;
    Ok(model_json(&updated))
}

async fn model_update(State(m): State<Shared>, headers: HeaderMap, bytes: Bytes) -> Response {
    handle(&m, &headers, || update_model(&m, &bytes, None)).await
}

async fn model_patch(
    State(m): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    handle(&m, &headers, || update_model(&m, &bytes, Some(id))).await
}

async fn model_delete(State(m): State<Shared>, headers: HeaderMap, bytes: Bytes) -> Response {
    handle(&m, &headers, || async {
        let body = Body::parse(&bytes)?;
        let id = body.required("id")?;
        m.delete_model(&id).await?;
        Ok(json!({ "message": format!("Model: {id} deleted successfully") }))
    })
    .await
}

// ---- customers (LiteLLM's end users) ----

/// LiteLLM's customer fields Tollgate cannot enforce yet, with why: given (not null), each
/// is a 400 rather than a setting that silently does nothing. `blocked: false` is accepted
/// (it is what every customer is).
const UNSUPPORTED_CUSTOMER_FIELDS: &[(&str, &str)] = &[
    ("allowed_model_region", "Tollgate does not route by region"),
    ("budget_id", "Tollgate has no budget table; set max_budget, soft_budget and budget_duration on the customer"),
    ("rpm_limit", "Tollgate has no per-customer rate limits"),
    ("tpm_limit", "Tollgate has no per-customer rate limits"),
    ("max_parallel_requests", "Tollgate has no per-customer rate limits"),
    ("model_max_budget", "Tollgate has no per-customer model budgets"),
    ("spend", "a customer's spend is what its requests cost"),
    ("budget_reset_at", "the window ends budget_duration after it starts"),
    ("object_permission", "Tollgate serves no MCP servers, vector stores or agents"),
];

fn refuse_unsupported_customer_fields(body: &Body) -> Result<(), ApiError> {
    if body.boolean("blocked")? == Some(true) {
        return Err(ApiError::invalid(
            "blocked",
            "not supported yet: Tollgate cannot refuse an end user's requests",
        ));
    }
    for (field, why) in UNSUPPORTED_CUSTOMER_FIELDS {
        if body.get(field).is_some() {
            return Err(ApiError::invalid(
                field,
                format!("not supported yet for customers: {why}"),
            ));
        }
    }
    Ok(())
}

/// A customer in LiteLLM's `LiteLLM_EndUserTable` shape (its budget in
/// `litellm_budget_table`, null without one), with the budget fields also at the top
/// level as `/user/info` shows them.
async fn customer_value(m: &Manager, customer: &CustomerRow) -> Result<Value, ApiError> {
    let mut map = Map::new();
    map.insert("user_id".into(), customer.user_id.clone().into());
    map.insert("alias".into(), json!(customer.alias));
    map.insert("blocked".into(), false.into());
    map.insert("allowed_model_region".into(), Value::Null);
    map.insert("default_model".into(), json!(customer.default_model));
    map.insert("budget_id".into(), Value::Null);
    map.insert("metadata".into(), customer.metadata.clone());
    map.insert("object_permission".into(), Value::Null);
    add_budget(
        m,
        &mut map,
        &customer.budget,
        SpendScope::EndUser,
        &customer.user_id,
    )
    .await?;
    let table = if customer.budget.is_set() {
        json!({
            "max_budget": map["max_budget"],
            "soft_budget": map["soft_budget"],
            "budget_duration": map["budget_duration"],
            "budget_reset_at": map["budget_reset_at"],
            "tpm_limit": null,
            "rpm_limit": null,
            "max_parallel_requests": null,
            "model_max_budget": null,
        })
    } else {
        Value::Null
    };
    map.insert("litellm_budget_table".into(), table);
    map.insert("created_at".into(), time(customer.created_at));
    map.insert("updated_at".into(), time(customer.updated_at));
    Ok(Value::Object(map))
}

async fn customer_new(State(m): State<Shared>, headers: HeaderMap, bytes: Bytes) -> Response {
    handle(&m, &headers, || async {
        let body = Body::parse(&bytes)?;
        let user_id = body.required("user_id")?;
        refuse_unsupported_customer_fields(&body)?;
        let request = CustomerCreate {
            user_id,
            alias: body.string("alias")?,
            default_model: body.string("default_model")?,
            metadata: body.object("metadata")?,
            budget: body.budget()?,
        };
        customer_value(&m, &m.create_customer(request).await?).await
    })
    .await
}

async fn customer_info(
    State(m): State<Shared>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    handle(&m, &headers, || async {
        let query = query_map(query)?;
        let user_id = query.get("end_user_id").cloned().unwrap_or_default();
        customer_value(&m, &m.customer_info(&user_id).await?).await
    })
    .await
}

async fn customer_update(State(m): State<Shared>, headers: HeaderMap, bytes: Bytes) -> Response {
    handle(&m, &headers, || async {
        let body = Body::parse(&bytes)?;
        let user_id = body.required("user_id")?;
        refuse_unsupported_customer_fields(&body)?;
        let request = CustomerUpdate {
            user_id,
            alias: body.nullable("alias")?,
            default_model: body.nullable("default_model")?,
            metadata: body.object("metadata")?,
            budget: body.budget()?,
        };
        customer_value(&m, &m.update_customer(request).await?).await
    })
    .await
}

async fn customer_delete(State(m): State<Shared>, headers: HeaderMap, bytes: Bytes) -> Response {
    handle(&m, &headers, || async {
        let body = Body::parse(&bytes)?;
        let user_ids = body
            .list("user_ids")?
            .ok_or_else(|| ApiError::invalid("user_ids", "required"))?;
        let deleted = m.delete_customers(&user_ids).await?;
        Ok(json!({
            "deleted_customers": deleted,
            "message": format!("Successfully deleted customers with ids: {user_ids:?}"),
        }))
    })
    .await
}

async fn customer_list(State(m): State<Shared>, headers: HeaderMap) -> Response {
    handle(&m, &headers, || async {
        let mut values = Vec::new();
        for customer in m.list_customers().await? {
            values.push(customer_value(&m, &customer).await?);
        }
        Ok(Value::Array(values))
    })
    .await
}

/// `/customer/block` and `/customer/unblock`: refused until the filters can refuse an end
/// user (accepting them would promise a block that does not happen).
async fn customer_block(State(m): State<Shared>, headers: HeaderMap) -> Response {
    handle(&m, &headers, || async {
        Err(ApiError::invalid(
            "user_ids",
            "blocking customers is not supported yet: Tollgate cannot refuse an end user's requests",
        ))
    })
    .await
}

async fn not_found() -> Response {
    ApiError::not_found("path", "Unknown management URL").into_response()
}

async fn wrong_method() -> Response {
    let body = json!({"error": {
        "message": "Method not allowed for this URL",
        "type": "invalid_request_error",
        "param": null,
        "code": "405",
    }});
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

/// The router of the whole API.
pub fn router(manager: Arc<Manager>) -> Router {
    Router::new()
        .route("/key/generate", post(key_generate))
        .route("/key/info", get(key_info))
        .route("/key/list", get(key_list))
        .route("/key/update", post(key_update))
        .route("/key/regenerate", post(key_regenerate))
        .route("/key/{key}/regenerate", post(key_regenerate_path))
        .route("/key/delete", post(key_delete))
        .route("/key/block", post(key_block))
        .route("/key/unblock", post(key_unblock))
        .route("/user/new", post(user_new))
        .route("/user/info", get(user_info))
        .route("/user/update", post(user_update))
        .route("/team/new", post(team_new))
        .route("/team/info", get(team_info))
        .route("/team/update", post(team_update))
        .route("/team/member_add", post(team_member_add))
        .route("/model/new", post(model_new))
        .route("/model/info", get(model_info))
        .route("/model/update", post(model_update))
        .route("/model/{id}/update", patch(model_patch))
        .route("/model/delete", post(model_delete))
        .route("/customer/new", post(customer_new))
        .route("/customer/info", get(customer_info))
        .route("/customer/update", post(customer_update))
        .route("/customer/delete", post(customer_delete))
        .route("/customer/list", get(customer_list))
        .route("/customer/block", post(customer_block))
        .route("/customer/unblock", post(customer_block))
        // LiteLLM's older names of the same endpoints.
        .route("/end_user/new", post(customer_new))
        .route("/end_user/info", get(customer_info))
        .route("/end_user/update", post(customer_update))
        .route("/end_user/delete", post(customer_delete))
        .route("/end_user/list", get(customer_list))
        .route("/end_user/block", post(customer_block))
        .route("/end_user/unblock", post(customer_block))
        .merge(crate::spend_api::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(wrong_method)
        .with_state(manager)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    manager: Arc<Manager>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(manager))
        .with_graceful_shutdown(shutdown)
        .await
}
