//! The spend API in LiteLLM's shapes: `/spend/logs` (a list, LiteLLM's v1),
//! `/spend/logs/v2` and `/spend/logs/ui` (a page envelope), `/global/spend`,
//! `/global/spend/report` and `/spend/tags`, over the usage ledger
//! ([`crate::store::Store::spend_logs`] and friends). Same authentication and error shape as
//! the rest of [`crate::http_api`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Map, Value};

use crate::http_api::{handle, query_map};
use crate::manage::{iso8601, token_of, ApiError, Manager};
use crate::proto::UsageRecord;
use crate::store::{
    ReportFilter, ReportGroup, ReportRow, SpendLogFilter, SpendScope, Store, StoreError, DAY_MS,
};

type Shared = Arc<Manager>;
type QueryResult = Result<Query<HashMap<String, String>>, QueryRejection>;

/// Largest `page_size` of a spend logs page.
pub const MAX_PAGE_SIZE: u64 = 1_000;

/// Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm, the inverse of
/// [`iso8601`]'s).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Which end of a range a date bounds: a bare date starts a range at its midnight and ends
/// one at the next midnight (the whole day is in).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bound {
    Start,
    End,
}

/// Unix ms of a UTC date as LiteLLM's spend endpoints take them: `YYYY-MM-DD`,
/// `YYYY-MM-DD HH:MM:SS` or ISO 8601 (`T` separator, fraction, trailing `Z`).
fn parse_date(param: &str, text: &str, bound: Bound) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::invalid(
            param,
            format!("expected a date like \"2025-01-31\" or \"2025-01-31 23:59:59\" (UTC), got {text:?}"),
        )
    };
    let text = text.trim();
    let number = |part: &str| -> Result<i64, ApiError> {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse::<i64>().map_err(|_| bad())
    };
    let (date, time) = match text.find([' ', 'T']) {
        Some(at) => (&text[..at], Some(&text[at + 1..])),
        None => (text, None),
    };
    let mut parts = date.split('-');
    let (Some(year), Some(month), Some(day), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if year.len() != 4 {
        return Err(bad());
    }
    let (year, month, day) = (number(year)?, number(month)?, number(day)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(bad());
    }
    let midnight = days_from_civil(year, month, day) * DAY_MS;
    let Some(time) = time else {
        return Ok(match bound {
            Bound::Start => midnight,
            Bound::End => midnight + DAY_MS,
        });
    };
    let time = time.strip_suffix('Z').unwrap_or(time);
    let (clock, fraction) = match time.split_once('.') {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (time, None),
    };
    let mut fields = clock.split(':');
    let (Some(hour), Some(minute), second, None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(bad());
    };
    let (hour, minute) = (number(hour)?, number(minute)?);
    let second = second.map(number).transpose()?.unwrap_or(0);
    if hour > 23 || minute > 59 || second > 59 {
        return Err(bad());
    }
    let millis = match fraction {
        None => 0,
        Some(digits) => {
            number(digits)?;
            // Only the first three digits count: "5" is 500 ms, "123456" is 123 ms.
            let padded = format!("{digits:0<3}");
            number(padded.get(..3).ok_or_else(bad)?)?
        }
    };
    let at = midnight + ((hour * 60 + minute) * 60 + second) * 1000 + millis;
    Ok(match bound {
        Bound::Start => at,
        // An end given to the second includes that second's whole.
        Bound::End if fraction.is_none() => at + 1000,
        Bound::End => at + 1,
    })
}

/// `name` of the query as a date, if given and not empty.
fn date_param(
    query: &HashMap<String, String>,
    name: &str,
    bound: Bound,
) -> Result<Option<i64>, ApiError> {
    match query
        .get(name)
        .map(|text| text.trim())
        .filter(|t| !t.is_empty())
    {
        None => Ok(None),
        Some(text) => parse_date(name, text, bound).map(Some),
    }
}

/// A non-empty text parameter.
fn text_param(query: &HashMap<String, String>, name: &str) -> Option<String> {
    query
        .get(name)
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty())
}

/// A positive integer parameter, `default` when absent, at most `max`.
fn count_param(
    query: &HashMap<String, String>,
    name: &str,
    default: u64,
    max: u64,
) -> Result<u64, ApiError> {
    match query
        .get(name)
        .map(|text| text.trim())
        .filter(|t| !t.is_empty())
    {
        None => Ok(default),
        Some(text) => match text.parse::<u64>() {
            Ok(value) if (1..=max).contains(&value) => Ok(value),
            _ => Err(ApiError::invalid(
                name,
                format!("must be an integer from 1 to {max}, got {text:?}"),
            )),
        },
    }
}

/// `start_date` and `end_date` as a range; an end before the start is a 400.
fn date_range(query: &HashMap<String, String>) -> Result<(Option<i64>, Option<i64>), ApiError> {
    let start = date_param(query, "start_date", Bound::Start)?;
    let end = date_param(query, "end_date", Bound::End)?;
    if let (Some(start), Some(end)) = (start, end) {
        if end <= start {
            return Err(ApiError::invalid("end_date", "must be after start_date"));
        }
    }
    Ok((start, end))
}

/// The filters of a `/spend/logs` request. `api_key` is a clear key (hashed, as LiteLLM
/// does) or its SHA-256 hex.
fn log_filter(query: &HashMap<String, String>) -> Result<SpendLogFilter, ApiError> {
    let (start_ms, end_ms) = date_range(query)?;
    Ok(SpendLogFilter {
        key_hash: text_param(query, "api_key").map(|key| token_of(&key)),
        user_id: text_param(query, "user_id"),
        team_id: text_param(query, "team_id"),
        model: text_param(query, "model"),
        end_user: text_param(query, "end_user").or_else(|| text_param(query, "customer_id")),
        request_id: text_param(query, "request_id"),
        start_ms,
        end_ms,
    })
}

fn time(ms: u64) -> Value {
    Value::String(iso8601(i64::try_from(ms).unwrap_or(i64::MAX)))
}

/// A usage record as a row of LiteLLM's `LiteLLM_SpendLogs`. `spend` is 0 when the cost is
/// unknown (LiteLLM's column is not nullable); `metadata.tollgate.cost_known` says which.
pub fn spend_log_json(record: &UsageRecord) -> Value {
    let prompt = record.prompt_tokens.unwrap_or(0);
    let completion = record.completion_tokens.unwrap_or(0);
    let failed = record.status >= 400 || !record.error_type.is_empty();
    let end_ms = record.started_unix_ms.saturating_add(record.duration_ms);
    let mut metadata = Map::new();
    metadata.insert("user_api_key".into(), record.key_hash.clone().into());
    metadata.insert("user_api_key_alias".into(), record.key_alias.clone().into());
    metadata.insert("user_api_key_user_id".into(), record.user_id.clone().into());
    metadata.insert("user_api_key_team_id".into(), record.team_id.clone().into());
    metadata.insert(
        "status".into(),
        if failed { "failure" } else { "success" }.into(),
    );
    if failed {
        metadata.insert(
            "error_information".into(),
            json!({
                "error_code": record.status.to_string(),
                "error_class": record.error_type,
            }),
        );
    }
    metadata.insert(
        "tollgate".into(),
        json!({
            "x_request_id": record.request_id,
            "http_status": record.status,
            "stream": record.stream,
            "cost_known": record.cost.is_some(),
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "cached_prompt_tokens": record.cached_prompt_tokens,
            "cache_creation_tokens": record.cache_creation_tokens,
            "reasoning_tokens": record.reasoning_tokens,
            "first_byte_ms": record.first_byte_ms,
            "answered_by_gateway": record.answered_by_gateway,
            "error_type": record.error_type,
        }),
    );
    json!({
        "request_id": record.id,
        "call_type": "acompletion",
        "api_key": record.key_hash,
        "spend": record.cost.unwrap_or(0.0),
        "total_tokens": prompt.saturating_add(completion),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "startTime": time(record.started_unix_ms),
        "endTime": time(end_ms),
        "completionStartTime": record
            .first_byte_ms
            .map_or_else(|| time(end_ms), |first| time(record.started_unix_ms.saturating_add(first))),
        "request_duration_ms": record.duration_ms,
        "model": record.model_name,
        "model_id": record.deployment_id,
        "model_group": record.model_name,
        "custom_llm_provider": record.provider,
        "user": record.user_id,
        "team_id": record.team_id,
        "end_user": record.end_user,
        "metadata": Value::Object(metadata),
        "request_tags": record.tags,
        "cache_hit": "False",
        "status": if failed { "failure" } else { "success" },
    })
}

/// One page of logs: the filters, `page` and `page_size`, and the rows.
async fn logs_page(
    store: &Store,
    query: &HashMap<String, String>,
    default_size: u64,
) -> Result<(SpendLogFilter, u64, u64, Vec<Value>), ApiError> {
    let filter = log_filter(query)?;
    let page = count_param(query, "page", 1, u64::from(u32::MAX))?;
    let size = count_param(query, "page_size", default_size, MAX_PAGE_SIZE)?;
    let offset = (page - 1).saturating_mul(size);
    let records = store.spend_logs(&filter, offset, size).await?;
    Ok((
        filter,
        page,
        size,
        records.iter().map(spend_log_json).collect(),
    ))
}

async fn spend_logs(State(m): State<Shared>, headers: HeaderMap, query: QueryResult) -> Response {
    handle(&m, &headers, || async {
        let query = query_map(query)?;
        let (_, _, _, rows) = logs_page(m.hub().store(), &query, 100).await?;
        Ok(Value::Array(rows))
    })
    .await
}

async fn spend_logs_v2(
    State(m): State<Shared>,
    headers: HeaderMap,
    query: QueryResult,
) -> Response {
    handle(&m, &headers, || async {
        let query = query_map(query)?;
        let store = m.hub().store();
        let (filter, page, size, rows) = logs_page(store, &query, 50).await?;
        let total = store.spend_logs_count(&filter).await?;
        Ok(json!({
            "data": rows,
            "total": total,
            "page": page,
            "page_size": size,
            "total_pages": total.div_ceil(size),
        }))
    })
    .await
}

async fn global_spend(State(m): State<Shared>, headers: HeaderMap) -> Response {
    handle(&m, &headers, || async {
        let spend = spend_of(m.hub().store(), SpendScope::Global, "").await?;
        Ok(json!({ "spend": spend, "max_budget": null }))
    })
    .await
}

/// The current window's spend of one scope (0 when nothing was charged to it).
pub async fn spend_of(store: &Store, scope: SpendScope, id: &str) -> Result<f64, StoreError> {
    Ok(store
        .spend_total(scope, id)
        .await?
        .map_or(0.0, |(spend, _)| spend))
}

fn day_text(day: Option<i64>) -> Value {
    match day {
        Some(day) => Value::String(iso8601(day * DAY_MS).chars().take(10).collect()),
        None => Value::Null,
    }
}

/// `[{"group_by_day", <list>: [{<label>, "total_spend", "metadata": [...]}]}]`, LiteLLM's
/// team and customer report shape.
/// One group of a per-day report: its label, total spend and detail rows.
type DayGroup = (Value, f64, Vec<Value>);

/// One group of a per-group report: total cost, input and output tokens, detail rows.
type GroupTotals = (f64, u64, u64, Vec<Value>);

fn per_day_report(
    rows: &[ReportRow],
    list: &str,
    label: &str,
    name_of: impl Fn(&ReportRow) -> Value,
) -> Value {
    let mut days: BTreeMap<i64, BTreeMap<String, DayGroup>> = BTreeMap::new();
    for row in rows {
        let name = name_of(row);
        let entry = days
            .entry(row.day.unwrap_or(0))
            .or_default()
            .entry(name.to_string())
            .or_insert_with(|| (name.clone(), 0.0, Vec::new()));
        entry.1 += row.spend;
        entry.2.push(json!({
            "model": row.model,
            "api_key": row.key_hash,
            "spend": row.spend,
            "total_tokens": row.prompt_tokens.saturating_add(row.completion_tokens),
        }));
    }
    Value::Array(
        days.into_iter()
            .map(|(day, groups)| {
                let mut groups: Vec<DayGroup> = groups.into_values().collect();
                groups.sort_by(|a, b| b.1.total_cmp(&a.1));
                let entries: Vec<Value> = groups
                    .into_iter()
                    .map(|(name, total, metadata)| {
                        let mut entry = Map::new();
                        entry.insert(label.to_string(), name);
                        entry.insert("total_spend".into(), json!(total));
                        entry.insert("metadata".into(), Value::Array(metadata));
                        Value::Object(entry)
                    })
                    .collect();
                let mut value = Map::new();
                value.insert("group_by_day".into(), day_text(Some(day)));
                value.insert(list.to_string(), Value::Array(entries));
                Value::Object(value)
            })
            .collect(),
    )
}

/// `[{<label>, "total_cost", "total_input_tokens", "total_output_tokens", <details>: [...]}]`
/// by total cost, LiteLLM's api_key report shape (and the same shape per user or model).
fn per_group_report(
    rows: &[ReportRow],
    label: &str,
    name_of: impl Fn(&ReportRow) -> String,
    details: &str,
    detail_label: &str,
    detail_of: impl Fn(&ReportRow) -> String,
) -> Value {
    let mut groups: BTreeMap<String, GroupTotals> = BTreeMap::new();
    for row in rows {
        let entry = groups.entry(name_of(row)).or_default();
        entry.0 += row.spend;
        entry.1 = entry.1.saturating_add(row.prompt_tokens);
        entry.2 = entry.2.saturating_add(row.completion_tokens);
        let mut detail = Map::new();
        detail.insert(detail_label.to_string(), detail_of(row).into());
        detail.insert("total_cost".into(), json!(row.spend));
        detail.insert("total_input_tokens".into(), json!(row.prompt_tokens));
        detail.insert("total_output_tokens".into(), json!(row.completion_tokens));
        detail.insert("requests".into(), json!(row.requests));
        entry.3.push(Value::Object(detail));
    }
    let mut groups: Vec<(String, GroupTotals)> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
    Value::Array(
        groups
            .into_iter()
            .map(|(name, (cost, input, output, list))| {
                let mut value = Map::new();
                value.insert(label.to_string(), name.into());
                value.insert("total_cost".into(), json!(cost));
                value.insert("total_input_tokens".into(), json!(input));
                value.insert("total_output_tokens".into(), json!(output));
                value.insert(details.to_string(), Value::Array(list));
                Value::Object(value)
            })
            .collect(),
    )
}

/// The `group_by` values `/global/spend/report` accepts: LiteLLM's `team`, `customer` and
/// `api_key`, and Tollgate's `end_user` (= customer), `key` (= api_key), `user`, `model`,
/// `day` and `tag`.
pub const REPORT_GROUPS: &[&str] = &[
    "team", "customer", "end_user", "api_key", "key", "user", "model", "day", "tag",
];

async fn global_spend_report(
    State(m): State<Shared>,
    headers: HeaderMap,
    query: QueryResult,
) -> Response {
    handle(&m, &headers, || async {
        let query = query_map(query)?;
        let store = m.hub().store();
        let (start, end) = date_range(&query)?;
        let start = start.ok_or_else(|| ApiError::invalid("start_date", "required"))?;
        let end = end.ok_or_else(|| ApiError::invalid("end_date", "required"))?;
        let restrict = ReportFilter {
            key_hash: text_param(&query, "api_key").map(|key| token_of(&key)),
            user_id: text_param(&query, "internal_user_id"),
        };
        let group_by = text_param(&query, "group_by").unwrap_or_else(|| "team".into());
        // As LiteLLM: a report for one key or one user is in the api_key shape.
        let group_by = if restrict.key_hash.is_some() || restrict.user_id.is_some() {
            "api_key".to_string()
        } else {
            group_by
        };
        let group = match group_by.as_str() {
            "team" => ReportGroup::Team,
            "customer" | "end_user" => ReportGroup::Customer,
            "api_key" | "key" => ReportGroup::ApiKey,
            "user" => ReportGroup::User,
            "model" => ReportGroup::Model,
            "day" => ReportGroup::Day,
            "tag" => {
                let tags = store.spend_by_tag(Some(start), Some(end)).await?;
                return Ok(tags_json(&tags));
            }
            other => {
                return Err(ApiError::invalid(
                    "group_by",
                    format!("must be one of {}, got {other:?}", REPORT_GROUPS.join(", ")),
                ))
            }
        };
        let rows = store.spend_report(start, end, group, &restrict).await?;
        Ok(match group {
            ReportGroup::Team => {
                let aliases = store.team_aliases().await?;
                per_day_report(&rows, "teams", "team_name", |row| {
                    if row.team_id.is_empty() {
                        "Unassigned Team".into()
                    } else {
                        aliases
                            .get(&row.team_id)
                            .cloned()
                            .unwrap_or_else(|| row.team_id.clone())
                            .into()
                    }
                })
            }
            ReportGroup::Customer => {
                per_day_report(&rows, "customers", "customer", |row| {
                    row.end_user.clone().into()
                })
            }
            ReportGroup::ApiKey => per_group_report(
                &rows,
                "api_key",
                |row| row.key_hash.clone(),
                "model_details",
                "model",
                |row| row.model.clone(),
            ),
            ReportGroup::User => per_group_report(
                &rows,
                "user_id",
                |row| row.user_id.clone(),
                "model_details",
                "model",
                |row| row.model.clone(),
            ),
            ReportGroup::Model => per_group_report(
                &rows,
                "model",
                |row| row.model.clone(),
                "api_key_details",
                "api_key",
                |row| row.key_hash.clone(),
            ),
            ReportGroup::Day => {
                let mut days: Vec<&ReportRow> = rows.iter().collect();
                days.sort_by_key(|row| row.day);
                Value::Array(
                    days.into_iter()
                        .map(|row| {
                            json!({
                                "group_by_day": day_text(row.day),
                                "total_spend": row.spend,
                                "total_input_tokens": row.prompt_tokens,
                                "total_output_tokens": row.completion_tokens,
                                "total_tokens": row.prompt_tokens.saturating_add(row.completion_tokens),
                                "requests": row.requests,
                            })
                        })
                        .collect(),
                )
            }
        })
    })
    .await
}

fn tags_json(tags: &[crate::store::TagSpend]) -> Value {
    Value::Array(
        tags.iter()
            .map(|tag| {
                json!({
                    "individual_request_tag": tag.tag,
                    "log_count": tag.log_count,
                    "total_spend": tag.total_spend,
                })
            })
            .collect(),
    )
}

async fn spend_tags(State(m): State<Shared>, headers: HeaderMap, query: QueryResult) -> Response {
    handle(&m, &headers, || async {
        let query = query_map(query)?;
        let (start, end) = date_range(&query)?;
        let tags = m.hub().store().spend_by_tag(start, end).await?;
        Ok(tags_json(&tags))
    })
    .await
}

/// The spend routes, merged into [`crate::http_api::router`].
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/spend/logs", get(spend_logs))
        .route("/spend/logs/v2", get(spend_logs_v2))
        .route("/spend/logs/ui", get(spend_logs_v2))
        .route("/spend/tags", get(spend_tags))
        .route("/global/spend", get(global_spend))
        .route("/global/spend/report", get(global_spend_report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_parse_as_utc() {
        assert_eq!(
            parse_date("d", "2025-01-31", Bound::Start).unwrap(),
            1_738_281_600_000
        );
        assert_eq!(
            parse_date("d", "2025-01-31", Bound::End).unwrap(),
            1_738_281_600_000 + DAY_MS
        );
        assert_eq!(
            parse_date("d", "2025-01-31 01:02:03", Bound::Start).unwrap(),
            1_738_281_600_000 + 3_723_000
        );
        assert_eq!(
            parse_date("d", "2025-01-31 01:02:03", Bound::End).unwrap(),
            1_738_281_600_000 + 3_724_000
        );
        assert_eq!(
            parse_date("d", "2025-01-31T01:02:03.5Z", Bound::Start).unwrap(),
            1_738_281_600_000 + 3_723_500
        );
        assert_eq!(
            parse_date("d", "2024-02-29", Bound::Start).unwrap(),
            1_709_164_800_000
        );
        for bad in [
            "2025-02-30",
            "2025-13-01",
            "31-01-2025",
            "2025-01-31 25:00:00",
            "x",
            "",
        ] {
            let error = parse_date("start_date", bad, Bound::Start).unwrap_err();
            assert_eq!(error.param.as_deref(), Some("start_date"), "{bad}");
        }
    }

    #[test]
    fn iso_days_round_trip() {
        for day in [-1000_i64, 0, 19_000, 20_454] {
            let text = iso8601(day * DAY_MS);
            let back = parse_date("d", &text[..10], Bound::Start).unwrap();
            assert_eq!(back, day * DAY_MS, "{text}");
        }
    }
}
