//! The spend ledger and the spend API on SQLite and PostgreSQL: a resent batch charges
//! once, every spend query over a synthetic ledger (the bench's loader, 10,000 rows) answers
//! exactly what the records say, the HTTP endpoints' filters, pages and shapes, bad input,
//! and retention.
// Test helpers outside #[test] functions: a failure should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::{json, Value};
use tokio::sync::oneshot;

use common::{on_both, Db};
use tollgate::app::start_control_plane;
use tollgate::config;
use tollgate::http_api;
use tollgate::manage::Manager;
use tollgate::proto::UsageRecord;
use tollgate::retention;
use tollgate::store::{
    synthetic_key_hash, synthetic_record, ReportFilter, ReportGroup, ReportRow, SpendLogFilter,
    SpendScope, Store, TagSpend, DAY_MS, SYNTHETIC_BASE_MS,
};

const MASTER: &str = "sk-spend-master";
const CONFIG: &str = "general_settings:\n  master_key: sk-spend-master\n";

#[allow(clippy::too_many_arguments)]
fn record(
    id: &str,
    key: &str,
    model: &str,
    user: &str,
    team: &str,
    end_user: &str,
    cost: Option<f64>,
    tags: &[&str],
    started: u64,
) -> UsageRecord {
    UsageRecord {
        id: id.into(),
        model_name: model.into(),
        deployment_id: format!("dep-{model}"),
        provider: "openai".into(),
        status: 200,
        prompt_tokens: Some(10),
        completion_tokens: Some(5),
        cached_prompt_tokens: Some(2),
        started_unix_ms: started,
        duration_ms: 250,
        stream: false,
        key_hash: key.into(),
        request_id: format!("x-{id}"),
        reasoning_tokens: Some(1),
        cache_creation_tokens: Some(3),
        cost,
        key_alias: format!("alias-{key}"),
        user_id: user.into(),
        team_id: team.into(),
        end_user: end_user.into(),
        tags: tags.iter().map(|tag| tag.to_string()).collect(),
        first_byte_ms: Some(40),
        answered_by_gateway: false,
        error_type: String::new(),
        error_class: String::new(),
    }
}

async fn total(store: &Store, scope: SpendScope, id: &str) -> Option<(f64, u64)> {
    store.spend_total(scope, id).await.unwrap()
}

// ---------------------------------------------------------------------------------------
// The ledger.

async fn resent_batch_charges_once(db: Db) {
    let store = common::connect(db.url()).await;
    let a = record(
        "a",
        "k1",
        "m",
        "u1",
        "t1",
        "e1",
        Some(0.5),
        &["x", "y"],
        1_000,
    );
    let b = record("b", "k1", "m2", "u1", "", "", Some(0.25), &["x"], 2_000);
    let c = record("c", "k2", "m", "u2", "t1", "", None, &["y"], 3_000);
    // `a` twice in one batch: stored and charged once.
    let batch = vec![a.clone(), b.clone(), c.clone(), a.clone()];
    assert_eq!(store.insert_usage(&batch).await.unwrap(), 3);
    let expected = [
        (SpendScope::Key, "k1", Some((0.75, 0))),
        (SpendScope::Key, "k2", None),
        (SpendScope::User, "u1", Some((0.75, 0))),
        (SpendScope::User, "u2", None),
        (SpendScope::Team, "t1", Some((0.5, 0))),
        (SpendScope::Team, "", None),
        (SpendScope::EndUser, "e1", Some((0.5, 0))),
        (SpendScope::EndUser, "", None),
        (SpendScope::Global, "", Some((0.75, 0))),
        (SpendScope::KeyModel, "k1/m", Some((0.5, 0))),
        (SpendScope::KeyModel, "k1/m2", Some((0.25, 0))),
        (SpendScope::KeyModel, "k2/m", None),
    ];
    for (scope, id, spend) in expected {
        assert_eq!(total(&store, scope, id).await, spend, "{scope:?} {id:?}");
    }
    // The batch again (a lost acknowledgement): nothing stored, nothing charged.
    assert_eq!(store.insert_usage(&batch).await.unwrap(), 0);
    for (scope, id, spend) in expected {
        assert_eq!(
            total(&store, scope, id).await,
            spend,
            "resent: {scope:?} {id:?}"
        );
    }
    // Old and new mixed: only the new one is charged.
    let d = record("d", "k2", "m", "u2", "t1", "", Some(0.125), &[], 4_000);
    assert_eq!(
        store.insert_usage(&[b.clone(), d.clone()]).await.unwrap(),
        1
    );
    assert_eq!(total(&store, SpendScope::Key, "k2").await, Some((0.125, 0)));
    assert_eq!(total(&store, SpendScope::Key, "k1").await, Some((0.75, 0)));
    assert_eq!(
        total(&store, SpendScope::Team, "t1").await,
        Some((0.625, 0))
    );
    assert_eq!(
        total(&store, SpendScope::Global, "").await,
        Some((0.875, 0))
    );

    // Every field survives.
    assert_eq!(
        store.usage_records().await.unwrap(),
        vec![a.clone(), b.clone(), c.clone(), d.clone()]
    );
    assert_eq!(
        store.spend_by_tag(None, None).await.unwrap(),
        vec![
            TagSpend {
                tag: "x".into(),
                log_count: 2,
                total_spend: 0.75
            },
            TagSpend {
                tag: "y".into(),
                log_count: 2,
                total_spend: 0.5
            },
        ]
    );

    // The budget clock's reset_at is kept and spend goes on from its reset value.
    common::raw_execute(
        db.url(),
        "UPDATE spend_totals SET spend = 0, reset_at = 123 WHERE scope = 'key' AND scope_id = 'k1'",
    )
    .await;
    let e = record("e", "k1", "m", "u1", "t1", "e1", Some(0.5), &[], 5_000);
    assert_eq!(store.insert_usage(&[e]).await.unwrap(), 1);
    assert_eq!(total(&store, SpendScope::Key, "k1").await, Some((0.5, 123)));

    // A batch larger than one INSERT statement (500 rows) is stored and charged whole.
    let many: Vec<UsageRecord> = (0..1_234u64)
        .map(|i| {
            record(
                &format!("many-{i}"),
                "k3",
                "m",
                "u3",
                "t3",
                "",
                Some((i % 7) as f64 / 1024.0),
                &["bulk"],
                10_000 + i,
            )
        })
        .collect();
    assert_eq!(store.insert_usage(&many).await.unwrap(), 1_234);
    let spend: f64 = (0..1_234u64).map(|i| (i % 7) as f64 / 1024.0).sum();
    assert_eq!(total(&store, SpendScope::Key, "k3").await, Some((spend, 0)));
    assert_eq!(store.usage_count().await.unwrap(), 5 + 1_234);
    assert_eq!(store.insert_usage(&many).await.unwrap(), 0);
    assert_eq!(total(&store, SpendScope::Key, "k3").await, Some((spend, 0)));
    store.close().await;
}

on_both!(
    resent_batch_charges_once,
    sqlite_resent_batch_charges_once,
    postgres_resent_batch_charges_once,
    worker_threads = 2
);

// ---------------------------------------------------------------------------------------
// Every spend query over the bench's synthetic ledger, against the records it is made of.

const SMALL: u64 = 10_000;

fn newest_first(records: &mut [UsageRecord]) {
    records.sort_by(|a, b| {
        b.started_unix_ms
            .cmp(&a.started_unix_ms)
            .then_with(|| b.id.cmp(&a.id))
    });
}

fn matches(filter: &SpendLogFilter, record: &UsageRecord) -> bool {
    let started = i64::try_from(record.started_unix_ms).unwrap();
    filter
        .key_hash
        .as_ref()
        .is_none_or(|v| *v == record.key_hash)
        && filter.user_id.as_ref().is_none_or(|v| *v == record.user_id)
        && filter.team_id.as_ref().is_none_or(|v| *v == record.team_id)
        && filter
            .model
            .as_ref()
            .is_none_or(|v| *v == record.model_name)
        && filter
            .end_user
            .as_ref()
            .is_none_or(|v| *v == record.end_user)
        && filter
            .request_id
            .as_ref()
            .is_none_or(|v| *v == record.id || *v == record.request_id)
        && filter.start_ms.is_none_or(|start| started >= start)
        && filter.end_ms.is_none_or(|end| started < end)
}

/// What `spend_report` must answer, computed from the records (sorted for comparison).
fn expected_report(
    records: &[UsageRecord],
    start: i64,
    end: i64,
    group: ReportGroup,
) -> Vec<ReportRow> {
    let mut groups: BTreeMap<(i64, String, String, String, String, String), ReportRow> =
        BTreeMap::new();
    for record in records {
        let started = i64::try_from(record.started_unix_ms).unwrap();
        if started < start || started >= end {
            continue;
        }
        let day = started / DAY_MS;
        let blank = String::new;
        let key = match group {
            ReportGroup::Team => (
                day,
                record.team_id.clone(),
                blank(),
                record.key_hash.clone(),
                blank(),
                record.model_name.clone(),
            ),
            ReportGroup::Customer => (
                day,
                blank(),
                record.end_user.clone(),
                record.key_hash.clone(),
                blank(),
                record.model_name.clone(),
            ),
            ReportGroup::ApiKey => (
                -1,
                blank(),
                blank(),
                record.key_hash.clone(),
                blank(),
                record.model_name.clone(),
            ),
            ReportGroup::User => (
                -1,
                blank(),
                blank(),
                blank(),
                record.user_id.clone(),
                record.model_name.clone(),
            ),
            ReportGroup::Model => (
                -1,
                blank(),
                blank(),
                record.key_hash.clone(),
                blank(),
                record.model_name.clone(),
            ),
            ReportGroup::Day => (day, blank(), blank(), blank(), blank(), blank()),
        };
        let row = groups.entry(key.clone()).or_insert_with(|| ReportRow {
            day: (key.0 >= 0).then_some(key.0),
            team_id: key.1.clone(),
            end_user: key.2.clone(),
            key_hash: key.3.clone(),
            user_id: key.4.clone(),
            model: key.5.clone(),
            ..Default::default()
        });
        row.spend += record.cost.unwrap_or(0.0);
        row.prompt_tokens += record.prompt_tokens.unwrap_or(0);
        row.completion_tokens += record.completion_tokens.unwrap_or(0);
        row.requests += 1;
    }
    groups.into_values().collect()
}

fn sorted(mut rows: Vec<ReportRow>) -> Vec<ReportRow> {
    rows.sort_by(|a, b| {
        (
            a.day,
            &a.team_id,
            &a.end_user,
            &a.key_hash,
            &a.user_id,
            &a.model,
        )
            .cmp(&(
                b.day,
                &b.team_id,
                &b.end_user,
                &b.key_hash,
                &b.user_id,
                &b.model,
            ))
    });
    rows
}

/// Asserts every report shape, spend per tag and the count of every filter over each range
/// against what `records` (the ledger as stored) add up to.
async fn assert_summaries(
    store: &Store,
    records: &[UsageRecord],
    ranges: &[(i64, i64)],
    filters: &[SpendLogFilter],
) {
    for filter in filters {
        let expected = records
            .iter()
            .filter(|record| matches(filter, record))
            .count();
        assert_eq!(
            store.spend_logs_count(filter).await.unwrap(),
            expected as u64,
            "{filter:?}"
        );
    }
    for &(start, end) in ranges {
        for group in [
            ReportGroup::Team,
            ReportGroup::Customer,
            ReportGroup::ApiKey,
            ReportGroup::User,
            ReportGroup::Model,
            ReportGroup::Day,
        ] {
            let report = store
                .spend_report(start, end, group, &ReportFilter::default())
                .await
                .unwrap();
            // Largest spend first.
            assert!(report.windows(2).all(|pair| pair[0].spend >= pair[1].spend));
            assert_eq!(
                sorted(report),
                sorted(expected_report(records, start, end, group)),
                "{group:?} {start}..{end}"
            );
        }
        for restrict in [
            ReportFilter {
                key_hash: Some(synthetic_key_hash(3)),
                user_id: None,
            },
            ReportFilter {
                key_hash: None,
                user_id: Some("user-3".into()),
            },
        ] {
            let restricted: Vec<UsageRecord> = records
                .iter()
                .filter(|record| {
                    restrict
                        .key_hash
                        .as_ref()
                        .is_none_or(|key| *key == record.key_hash)
                        && restrict
                            .user_id
                            .as_ref()
                            .is_none_or(|user| *user == record.user_id)
                })
                .cloned()
                .collect();
            let report = store
                .spend_report(start, end, ReportGroup::ApiKey, &restrict)
                .await
                .unwrap();
            assert_eq!(
                sorted(report),
                sorted(expected_report(
                    &restricted,
                    start,
                    end,
                    ReportGroup::ApiKey
                )),
                "{restrict:?} {start}..{end}"
            );
        }
    }
    let tag_ranges = ranges
        .iter()
        .map(|&(start, end)| (Some(start), Some(end)))
        .chain([
            (None, None),
            (ranges.first().map(|range| range.0 + 5), None),
        ]);
    for (start, end) in tag_ranges {
        let mut expected: BTreeMap<String, (u64, f64)> = BTreeMap::new();
        for record in records {
            let started = i64::try_from(record.started_unix_ms).unwrap();
            if start.is_some_and(|s| started < s) || end.is_some_and(|e| started >= e) {
                continue;
            }
            for tag in &record.tags {
                let entry = expected.entry(tag.clone()).or_default();
                entry.0 += 1;
                entry.1 += record.cost.unwrap_or(0.0);
            }
        }
        let mut tags = store.spend_by_tag(start, end).await.unwrap();
        assert!(tags
            .windows(2)
            .all(|pair| pair[0].total_spend >= pair[1].total_spend));
        tags.sort_by(|a, b| a.tag.cmp(&b.tag));
        let expected: Vec<TagSpend> = expected
            .into_iter()
            .map(|(tag, (log_count, total_spend))| TagSpend {
                tag,
                log_count,
                total_spend,
            })
            .collect();
        assert_eq!(tags, expected, "tags {start:?}..{end:?}");
    }
}

async fn synthetic_ledger_queries(db: Db) {
    let store = common::connect(db.url()).await;
    // The first 4,000 records as the bench loads them (in chunks, generated in SQL, then
    // totals and rollups rebuilt); the other 6,000 stored as filters send them, in batches
    // of 500, which keeps the rollups in step record by record.
    store.load_synthetic_usage(0, 2_000, SMALL).await.unwrap();
    store
        .load_synthetic_usage(2_000, 4_000, SMALL)
        .await
        .unwrap();
    store.rebuild_synthetic_totals().await.unwrap();
    let records: Vec<UsageRecord> = (0..SMALL).map(|i| synthetic_record(i, SMALL)).collect();
    for batch in records[4_000..].chunks(500) {
        assert_eq!(store.insert_usage(batch).await.unwrap(), 500);
    }
    // Resent: counted once.
    assert_eq!(store.insert_usage(&records[9_500..]).await.unwrap(), 0);
    store.analyze().await.unwrap();
    assert_eq!(store.usage_records().await.unwrap(), records);

    let day = i64::try_from(SYNTHETIC_BASE_MS).unwrap();
    let hour = DAY_MS / 24;
    let filters = [
        SpendLogFilter::default(),
        SpendLogFilter {
            key_hash: Some(synthetic_key_hash(7)),
            ..Default::default()
        },
        SpendLogFilter {
            user_id: Some("user-7".into()),
            ..Default::default()
        },
        SpendLogFilter {
            team_id: Some("team-7".into()),
            ..Default::default()
        },
        SpendLogFilter {
            model: Some("model-3".into()),
            ..Default::default()
        },
        SpendLogFilter {
            end_user: Some("customer-7".into()),
            ..Default::default()
        },
        SpendLogFilter {
            start_ms: Some(day + 3 * DAY_MS),
            end_ms: Some(day + 5 * DAY_MS),
            ..Default::default()
        },
        SpendLogFilter {
            key_hash: Some(synthetic_key_hash(7)),
            start_ms: Some(day + 3 * DAY_MS),
            end_ms: Some(day + 20 * DAY_MS),
            ..Default::default()
        },
        SpendLogFilter {
            request_id: Some("r0000004242".into()),
            ..Default::default()
        },
        SpendLogFilter {
            request_id: Some("req-4243".into()),
            ..Default::default()
        },
    ];
    for filter in &filters {
        let mut expected: Vec<UsageRecord> = records
            .iter()
            .filter(|record| matches(filter, record))
            .cloned()
            .collect();
        newest_first(&mut expected);
        // The first page and a deep one.
        for (offset, limit) in [(0u64, 50u64), (expected.len() as u64 / 2, 25)] {
            let page = store.spend_logs(filter, offset, limit).await.unwrap();
            let wanted: Vec<UsageRecord> = expected
                .iter()
                .skip(offset as usize)
                .take(limit as usize)
                .cloned()
                .collect();
            assert_eq!(page, wanted, "{filter:?} offset {offset}");
        }
    }
    assert_eq!(
        store
            .spend_logs(&filters[8], 0, 10)
            .await
            .unwrap()
            .iter()
            .map(|record| record.id.clone())
            .collect::<Vec<_>>(),
        ["r0000004242"]
    );

    // Whole days (rollups only), ranges starting and ending inside days (rollups and both
    // edges from the records), inside one day and across one midnight (records only).
    let ranges = [
        (day, day + 30 * DAY_MS),
        (day + 2 * DAY_MS, day + 3 * DAY_MS),
        (
            day + 2 * DAY_MS + 3 * hour + 17,
            day + 9 * DAY_MS + 5 * hour,
        ),
        (day + 4 * DAY_MS + hour, day + 4 * DAY_MS + 20 * hour),
        (day + 4 * DAY_MS + 20 * hour, day + 5 * DAY_MS + 2 * hour),
    ];
    let mut count_filters = filters.to_vec();
    for (start, end) in &ranges[2..] {
        for filter in &filters[..6] {
            count_filters.push(SpendLogFilter {
                start_ms: Some(*start),
                end_ms: Some(*end),
                ..filter.clone()
            });
        }
    }
    count_filters.push(SpendLogFilter {
        request_id: Some("req-4243".into()),
        start_ms: Some(day + DAY_MS),
        end_ms: None,
        ..Default::default()
    });
    assert_summaries(&store, &records, &ranges, &count_filters).await;

    let key_spend: f64 = records
        .iter()
        .filter(|record| record.key_hash == synthetic_key_hash(7))
        .filter_map(|record| record.cost)
        .sum();
    assert_eq!(
        total(&store, SpendScope::Key, &synthetic_key_hash(7)).await,
        Some((key_spend, 0))
    );
    let all: f64 = records.iter().filter_map(|record| record.cost).sum();
    assert_eq!(total(&store, SpendScope::Global, "").await, Some((all, 0)));

    // Retention from inside a day: what it deletes leaves the rollups too, so every summary
    // still adds up the records that are left, and the days it emptied are gone.
    let cutoff = day + 5 * DAY_MS + 3 * hour;
    let kept: Vec<UsageRecord> = records
        .iter()
        .filter(|record| i64::try_from(record.started_unix_ms).unwrap() >= cutoff)
        .cloned()
        .collect();
    let deleted = store.delete_usage_before(cutoff, 700).await.unwrap();
    assert_eq!(deleted, (records.len() - kept.len()) as u64);
    assert_eq!(store.usage_count().await.unwrap(), kept.len() as u64);
    assert_summaries(&store, &kept, &ranges, &count_filters).await;
    let days = store
        .spend_report(
            day,
            day + 30 * DAY_MS,
            ReportGroup::Day,
            &ReportFilter::default(),
        )
        .await
        .unwrap();
    assert_eq!(days.len(), 25, "days 5 to 29 are left");
    // Budgets count what was spent, not what is still logged.
    assert_eq!(total(&store, SpendScope::Global, "").await, Some((all, 0)));
    store.close().await;
}

on_both!(
    synthetic_ledger_queries,
    sqlite_synthetic_ledger_queries,
    postgres_synthetic_ledger_queries,
    worker_threads = 2
);

// ---------------------------------------------------------------------------------------
// Retention.

async fn retention_deletes_only_old_rows(db: Db) {
    let store = common::connect(db.url()).await;
    let now = 100 * DAY_MS as u64;
    let mut batch = Vec::new();
    for i in 0..12u64 {
        // 12 records 10 days old, 3 records 1 day old.
        batch.push(record(
            &format!("old-{i:02}"),
            "k",
            "m",
            "u",
            "t",
            "",
            Some(0.5),
            &["a", "b"],
            now - 10 * DAY_MS as u64 + i,
        ));
    }
    for i in 0..3u64 {
        batch.push(record(
            &format!("new-{i}"),
            "k",
            "m",
            "u",
            "t",
            "",
            Some(0.25),
            &["a"],
            now - DAY_MS as u64 + i,
        ));
    }
    assert_eq!(store.insert_usage(&batch).await.unwrap(), 15);
    // Batches of 5: 5 + 5 + 2 old records.
    let cutoff = i64::try_from(now - 7 * DAY_MS as u64).unwrap();
    assert_eq!(store.delete_usage_batch(cutoff, 5).await.unwrap(), 5);
    assert_eq!(store.usage_count().await.unwrap(), 10);
    assert_eq!(store.delete_usage_before(cutoff, 5).await.unwrap(), 7);
    let left: Vec<String> = store
        .usage_records()
        .await
        .unwrap()
        .into_iter()
        .map(|record| record.id)
        .collect();
    assert_eq!(left, ["new-0", "new-1", "new-2"]);
    // Their tags went with them.
    assert_eq!(
        store.spend_by_tag(None, None).await.unwrap(),
        vec![TagSpend {
            tag: "a".into(),
            log_count: 3,
            total_spend: 0.75
        }]
    );
    // Budgets count what was spent, not what is still logged.
    assert_eq!(total(&store, SpendScope::Key, "k").await, Some((6.75, 0)));
    // The task's pass: nothing more is old enough.
    assert_eq!(
        retention::prune_once(&store, 7 * DAY_MS as u64, now)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        retention::prune_once(&store, DAY_MS as u64 - 2, now)
            .await
            .unwrap(),
        2,
        "records started before now - 1 day + 2 ms"
    );
    assert_eq!(store.usage_count().await.unwrap(), 1);
    store.close().await;
}

on_both!(
    retention_deletes_only_old_rows,
    sqlite_retention_deletes_only_old_rows,
    postgres_retention_deletes_only_old_rows,
    worker_threads = 2
);

// ---------------------------------------------------------------------------------------
// The HTTP API.

struct Plane {
    store: Store,
    http: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Plane {
    async fn start(url: &str) -> Plane {
        let store = common::connect(url).await;
        let loaded = config::parse(CONFIG, "spend-test.yaml", &|_| None).unwrap();
        let hub = start_control_plane(store.clone(), &loaded).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            http_api::serve(Manager::new(hub), listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Plane {
            store,
            http,
            stop,
            task,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
        self.store.close().await;
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Value>,
        key: Option<&str>,
    ) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .request(method, format!("http://{}{path}", self.http))
            .query(query);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text:?}"));
        (status, value)
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, query, None, Some(MASTER))
            .await
    }

    async fn ok(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let (status, body) = self.get(path, query).await;
        assert_eq!(status, 200, "GET {path} {query:?}: {body}");
        body
    }
}

fn ids(rows: &Value) -> Vec<String> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|row| row["request_id"].as_str().unwrap().to_string())
        .collect()
}

fn assert_bad(answer: (u16, Value), param: &str) {
    let (status, body) = answer;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], param, "{body}");
    assert_eq!(body["error"]["code"], "400", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains(param),
        "{body}"
    );
}

/// 2026-11-01T00:00:00Z plus `day` days and `ms`.
fn at(day: u64, ms: u64) -> u64 {
    SYNTHETIC_BASE_MS + day * DAY_MS as u64 + ms
}

async fn spend_endpoints(db: Db) {
    let plane = Plane::start(db.url()).await;
    let (status, team) = plane
        .call(
            reqwest::Method::POST,
            "/team/new",
            &[],
            Some(json!({"team_id": "t1", "team_alias": "Team One"})),
            Some(MASTER),
        )
        .await;
    assert_eq!(status, 200, "{team}");
    let (status, created) = plane
        .call(
            reqwest::Method::POST,
            "/key/generate",
            &[],
            Some(json!({"user_id": "u1", "team_id": "t1"})),
            Some(MASTER),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let clear = created["key"].as_str().unwrap().to_string();
    let token = created["token"].as_str().unwrap().to_string();

    let mut failed = record("r4", &token, "m2", "u1", "t1", "", None, &[], at(1, 500));
    failed.status = 429;
    failed.error_type = "rate_limit_error".into();
    let batch = vec![
        record(
            "r1",
            &token,
            "m1",
            "u1",
            "t1",
            "cust",
            Some(0.5),
            &["x"],
            at(0, 1_000),
        ),
        record(
            "r2",
            &token,
            "m2",
            "u1",
            "t1",
            "",
            Some(0.25),
            &["x", "y"],
            at(0, 2_000),
        ),
        record(
            "r3",
            "other",
            "m1",
            "u2",
            "",
            "cust",
            Some(1.0),
            &[],
            at(1, 0),
        ),
        failed,
    ];
    assert_eq!(plane.store.insert_usage(&batch).await.unwrap(), 4);

    // Logs, newest first; the clear key and its hash find the same rows.
    let all = plane.ok("/spend/logs", &[]).await;
    assert_eq!(ids(&all), ["r4", "r3", "r2", "r1"]);
    assert_eq!(
        ids(&plane.ok("/spend/logs", &[("api_key", &clear)]).await),
        ["r4", "r2", "r1"]
    );
    assert_eq!(
        ids(&plane.ok("/spend/logs", &[("api_key", &token)]).await),
        ["r4", "r2", "r1"]
    );
    for (filter, expected) in [
        (("user_id", "u2"), vec!["r3"]),
        (("team_id", "t1"), vec!["r4", "r2", "r1"]),
        (("model", "m1"), vec!["r3", "r1"]),
        (("end_user", "cust"), vec!["r3", "r1"]),
        (("request_id", "r2"), vec!["r2"]),
        (("request_id", "x-r3"), vec!["r3"]),
        (("start_date", "2026-11-02"), vec!["r4", "r3"]),
        (("end_date", "2026-11-01"), vec!["r2", "r1"]),
        (("end_date", "2026-11-01 00:00:01"), vec!["r1"]),
    ] {
        assert_eq!(
            ids(&plane.ok("/spend/logs", &[filter]).await),
            expected,
            "{filter:?}"
        );
    }
    assert_eq!(
        ids(&plane
            .ok(
                "/spend/logs",
                &[("start_date", "2026-11-01"), ("end_date", "2026-11-01")]
            )
            .await),
        ["r2", "r1"]
    );
    assert_eq!(
        ids(&plane
            .ok("/spend/logs", &[("page", "2"), ("page_size", "3")])
            .await),
        ["r1"]
    );

    // One row in LiteLLM's SpendLogs shape.
    let row = &plane.ok("/spend/logs", &[("request_id", "r1")]).await[0];
    assert_eq!(
        *row,
        json!({
            "request_id": "r1",
            "call_type": "acompletion",
            "api_key": token,
            "spend": 0.5,
            "total_tokens": 15,
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "startTime": "2026-11-01T00:00:01.000Z",
            "endTime": "2026-11-01T00:00:01.250Z",
            "completionStartTime": "2026-11-01T00:00:01.040Z",
            "request_duration_ms": 250,
            "model": "m1",
            "model_id": "dep-m1",
            "model_group": "m1",
            "custom_llm_provider": "openai",
            "user": "u1",
            "team_id": "t1",
            "end_user": "cust",
            "metadata": {
                "user_api_key": token,
                "user_api_key_alias": format!("alias-{token}"),
                "user_api_key_user_id": "u1",
                "user_api_key_team_id": "t1",
                "status": "success",
                "tollgate": {
                    "x_request_id": "x-r1",
                    "http_status": 200,
                    "stream": false,
                    "cost_known": true,
                    "prompt_tokens": 10,
                    "completion_tokens": 5,
                    "cached_prompt_tokens": 2,
                    "cache_creation_tokens": 3,
                    "reasoning_tokens": 1,
                    "first_byte_ms": 40,
                    "answered_by_gateway": false,
                    "error_type": "",
                },
            },
            "request_tags": ["x"],
            "cache_hit": "False",
            "status": "success",
        })
    );
    let failed_row = &plane.ok("/spend/logs", &[("request_id", "r4")]).await[0];
    assert_eq!(failed_row["status"], "failure");
    assert_eq!(failed_row["spend"], 0.0);
    assert_eq!(failed_row["metadata"]["tollgate"]["cost_known"], false);
    assert_eq!(
        failed_row["metadata"]["error_information"],
        json!({"error_code": "429", "error_class": "rate_limit_error"})
    );

    // v2: LiteLLM's page envelope.
    let page = plane
        .ok(
            "/spend/logs/v2",
            &[("team_id", "t1"), ("page", "2"), ("page_size", "2")],
        )
        .await;
    assert_eq!(ids(&page["data"]), ["r1"]);
    assert_eq!(page["total"], 3);
    assert_eq!(page["page"], 2);
    assert_eq!(page["page_size"], 2);
    assert_eq!(page["total_pages"], 2);
    let ui = plane.ok("/spend/logs/ui", &[]).await;
    assert_eq!(ui["total"], 4);
    assert_eq!(ui["page_size"], 50);

    // Totals.
    assert_eq!(
        plane.ok("/global/spend", &[]).await,
        json!({"spend": 1.75, "max_budget": null})
    );
    let info = plane.ok("/key/info", &[("key", &clear)]).await;
    assert_eq!(info["info"]["spend"], 0.75);
    let user = plane.ok("/user/info", &[("user_id", "u1")]).await;
    assert_eq!(user["user_info"]["spend"], 0.75);
    assert_eq!(user["keys"][0]["spend"], 0.75);
    let team = plane.ok("/team/info", &[("team_id", "t1")]).await;
    assert_eq!(team["team_info"]["spend"], 0.75);
    assert_eq!(team["keys"][0]["spend"], 0.75);

    // Reports.
    let range = [("start_date", "2026-11-01"), ("end_date", "2026-11-02")];
    let with = |group: &'static str| {
        let mut query = range.to_vec();
        query.push(("group_by", group));
        query
    };
    assert_eq!(
        plane.ok("/global/spend/report", &range).await,
        json!([
            {"group_by_day": "2026-11-01", "teams": [
                {"team_name": "Team One", "total_spend": 0.75, "metadata": [
                    {"model": "m1", "api_key": token, "spend": 0.5, "total_tokens": 15},
                    {"model": "m2", "api_key": token, "spend": 0.25, "total_tokens": 15},
                ]},
            ]},
            {"group_by_day": "2026-11-02", "teams": [
                {"team_name": "Unassigned Team", "total_spend": 1.0, "metadata": [
                    {"model": "m1", "api_key": "other", "spend": 1.0, "total_tokens": 15},
                ]},
                {"team_name": "Team One", "total_spend": 0.0, "metadata": [
                    {"model": "m2", "api_key": token, "spend": 0.0, "total_tokens": 15},
                ]},
            ]},
        ])
    );
    assert_eq!(
        plane.ok("/global/spend/report", &with("customer")).await,
        json!([
            {"group_by_day": "2026-11-01", "customers": [
                {"customer": "cust", "total_spend": 0.5, "metadata": [
                    {"model": "m1", "api_key": token, "spend": 0.5, "total_tokens": 15},
                ]},
                {"customer": "", "total_spend": 0.25, "metadata": [
                    {"model": "m2", "api_key": token, "spend": 0.25, "total_tokens": 15},
                ]},
            ]},
            {"group_by_day": "2026-11-02", "customers": [
                {"customer": "cust", "total_spend": 1.0, "metadata": [
                    {"model": "m1", "api_key": "other", "spend": 1.0, "total_tokens": 15},
                ]},
                {"customer": "", "total_spend": 0.0, "metadata": [
                    {"model": "m2", "api_key": token, "spend": 0.0, "total_tokens": 15},
                ]},
            ]},
        ])
    );
    let detail = |label: &str, name: &str, cost: f64, requests: u64| {
        let mut map = serde_json::Map::new();
        map.insert(label.into(), name.into());
        map.insert("total_cost".into(), json!(cost));
        map.insert("total_input_tokens".into(), json!(10 * requests));
        map.insert("total_output_tokens".into(), json!(5 * requests));
        map.insert("requests".into(), json!(requests));
        Value::Object(map)
    };
    let api_key_report = json!([
        {"api_key": "other", "total_cost": 1.0, "total_input_tokens": 10, "total_output_tokens": 5,
         "model_details": [detail("model", "m1", 1.0, 1)]},
        {"api_key": token, "total_cost": 0.75, "total_input_tokens": 30, "total_output_tokens": 15,
         "model_details": [detail("model", "m1", 0.5, 1), detail("model", "m2", 0.25, 2)]},
    ]);
    let mut by_key = plane.ok("/global/spend/report", &with("api_key")).await;
    sort_details(&mut by_key, "model_details", "model");
    assert_eq!(by_key, api_key_report);
    let mut one_key = plane
        .ok(
            "/global/spend/report",
            &[range[0], range[1], ("api_key", &clear)],
        )
        .await;
    sort_details(&mut one_key, "model_details", "model");
    assert_eq!(one_key, json!([api_key_report[1]]));
    let mut by_model = plane.ok("/global/spend/report", &with("model")).await;
    sort_details(&mut by_model, "api_key_details", "api_key");
    let mut key_details = vec![
        detail("api_key", "other", 1.0, 1),
        detail("api_key", &token, 0.5, 1),
    ];
    key_details.sort_by(|a, b| a["api_key"].as_str().cmp(&b["api_key"].as_str()));
    assert_eq!(
        by_model,
        json!([
            {"model": "m1", "total_cost": 1.5, "total_input_tokens": 20, "total_output_tokens": 10,
             "api_key_details": key_details},
            {"model": "m2", "total_cost": 0.25, "total_input_tokens": 20, "total_output_tokens": 10,
             "api_key_details": [detail("api_key", &token, 0.25, 2)]},
        ])
    );
    assert_eq!(
        plane.ok("/global/spend/report", &with("user")).await,
        json!([
            {"user_id": "u2", "total_cost": 1.0, "total_input_tokens": 10, "total_output_tokens": 5,
             "model_details": [detail("model", "m1", 1.0, 1)]},
            {"user_id": "u1", "total_cost": 0.75, "total_input_tokens": 30, "total_output_tokens": 15,
             "model_details": [detail("model", "m1", 0.5, 1), detail("model", "m2", 0.25, 2)]},
        ])
    );
    assert_eq!(
        plane.ok("/global/spend/report", &with("day")).await,
        json!([
            {"group_by_day": "2026-11-01", "total_spend": 0.75, "total_input_tokens": 20,
             "total_output_tokens": 10, "total_tokens": 30, "requests": 2},
            {"group_by_day": "2026-11-02", "total_spend": 1.0, "total_input_tokens": 20,
             "total_output_tokens": 10, "total_tokens": 30, "requests": 2},
        ])
    );
    let tags = json!([
        {"individual_request_tag": "x", "log_count": 2, "total_spend": 0.75},
        {"individual_request_tag": "y", "log_count": 1, "total_spend": 0.25},
    ]);
    assert_eq!(plane.ok("/global/spend/report", &with("tag")).await, tags);
    assert_eq!(plane.ok("/spend/tags", &[]).await, tags);
    assert_eq!(
        plane
            .ok("/spend/tags", &[("start_date", "2026-11-01 00:00:02")])
            .await,
        json!([{"individual_request_tag": "x", "log_count": 1, "total_spend": 0.25},
               {"individual_request_tag": "y", "log_count": 1, "total_spend": 0.25}])
    );
    // Only the first day.
    assert_eq!(
        plane
            .ok(
                "/global/spend/report",
                &[
                    ("start_date", "2026-11-01"),
                    ("end_date", "2026-11-01"),
                    ("group_by", "day")
                ]
            )
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Bad input: a 400 naming the parameter.
    assert_bad(
        plane
            .get("/spend/logs", &[("start_date", "yesterday")])
            .await,
        "start_date",
    );
    assert_bad(
        plane
            .get("/spend/logs/v2", &[("end_date", "2026-02-30")])
            .await,
        "end_date",
    );
    assert_bad(
        plane
            .get(
                "/spend/logs",
                &[
                    ("start_date", "2026-11-02"),
                    ("end_date", "2026-11-01 00:00:00"),
                ],
            )
            .await,
        "end_date",
    );
    assert_bad(
        plane.get("/spend/logs", &[("page_size", "0")]).await,
        "page_size",
    );
    assert_bad(
        plane.get("/spend/logs", &[("page_size", "1001")]).await,
        "page_size",
    );
    assert_bad(plane.get("/spend/logs/v2", &[("page", "x")]).await, "page");
    assert_bad(
        plane
            .get("/global/spend/report", &[("end_date", "2026-11-02")])
            .await,
        "start_date",
    );
    assert_bad(
        plane
            .get("/global/spend/report", &[("start_date", "2026-11-02")])
            .await,
        "end_date",
    );
    assert_bad(
        plane.get("/global/spend/report", &with("teams")).await,
        "group_by",
    );
    assert_bad(
        plane
            .get("/spend/tags", &[("end_date", "11/02/2026")])
            .await,
        "end_date",
    );
    // The management API's authentication.
    for path in [
        "/spend/logs",
        "/spend/logs/v2",
        "/spend/tags",
        "/global/spend",
        "/global/spend/report",
    ] {
        let (status, body) = plane
            .call(reqwest::Method::GET, path, &[], None, None)
            .await;
        assert_eq!(status, 401, "{path}: {body}");
        // A key of a user who is not a proxy admin.
        let (status, body) = plane
            .call(reqwest::Method::GET, path, &[], None, Some(&clear))
            .await;
        assert_eq!(status, 403, "{path}: {body}");
    }
    plane.stop().await;
}

/// Sorts each group's `list` by `field`, the order within a group being unspecified.
fn sort_details(report: &mut Value, list: &str, field: &str) {
    for group in report.as_array_mut().unwrap() {
        group[list]
            .as_array_mut()
            .unwrap()
            .sort_by(|a, b| a[field].as_str().cmp(&b[field].as_str()));
    }
}

on_both!(
    spend_endpoints,
    sqlite_spend_endpoints,
    postgres_spend_endpoints,
    worker_threads = 2
);
