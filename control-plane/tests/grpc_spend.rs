//! The spend API over gRPC (`ListSpendLogs`, `GetGlobalSpend`, `GetSpendReport`,
//! `ListSpendTags`) on SQLite and PostgreSQL: exact results over inserted usage records,
//! authentication and errors like the other management calls.
// Test helpers outside #[test] functions: a failure should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use tonic::{Code, Request};

use common::{authed, on_both, Db, Plane, CONFIG};
use tollgate::proto::{self as pb, UsageRecord};
use tollgate::store::sha256_hex;

const DAY_MS: u64 = 86_400_000;
/// 2025-01-31T00:00:00Z.
const BASE: u64 = 1_738_281_600_000;

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
        started_unix_ms: started,
        duration_ms: 250,
        key_hash: key.into(),
        request_id: format!("x-{id}"),
        cost,
        key_alias: format!("alias-{key}"),
        user_id: user.into(),
        team_id: team.into(),
        end_user: end_user.into(),
        tags: tags.iter().map(|tag| tag.to_string()).collect(),
        ..Default::default()
    }
}

/// Five records over two days: keys k1 and k2, teams t1 and none, end users e1 and e2.
fn records() -> Vec<UsageRecord> {
    vec![
        record(
            "a",
            "k1",
            "gpt",
            "u1",
            "t1",
            "e1",
            Some(0.5),
            &["prod"],
            BASE + 1_000,
        ),
        record(
            "b",
            "k1",
            "gpt",
            "u1",
            "t1",
            "e2",
            Some(0.25),
            &["prod", "beta"],
            BASE + 2_000,
        ),
        record(
            "c",
            "k2",
            "claude",
            "u2",
            "",
            "e1",
            Some(1.0),
            &["beta"],
            BASE + 3_000,
        ),
        record(
            "d",
            "k2",
            "claude",
            "u2",
            "",
            "e1",
            None,
            &[],
            BASE + DAY_MS + 1_000,
        ),
        record(
            "e",
            "k1",
            "claude",
            "u1",
            "t1",
            "",
            Some(2.0),
            &[],
            BASE + DAY_MS + 2_000,
        ),
    ]
}

fn ids(records: &[UsageRecord]) -> Vec<&str> {
    records.iter().map(|record| record.id.as_str()).collect()
}

fn row(day: Option<u64>, columns: [&str; 5], spend: f64, requests: u64) -> pb::SpendReportRow {
    let [team_id, end_user, key_hash, user_id, model] = columns;
    pb::SpendReportRow {
        day_unix_ms: day,
        team_id: team_id.into(),
        team_alias: String::new(),
        end_user: end_user.into(),
        key_hash: key_hash.into(),
        user_id: user_id.into(),
        model: model.into(),
        spend,
        prompt_tokens: 10 * requests,
        completion_tokens: 5 * requests,
        requests,
    }
}

async fn spend_over_grpc(db: Db) {
    let plane = Plane::start(db.url(), CONFIG).await;
    assert_eq!(plane.store.insert_usage(&records()).await.unwrap(), 5);
    let mut client = plane.grpc_client().await;

    // Logs: newest first, whole records, paged.
    let page = client
        .list_spend_logs(authed(pb::ListSpendLogsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&page.records), ["e", "d", "c", "b", "a"]);
    assert_eq!(
        (page.total, page.page, page.page_size, page.total_pages),
        (5, 1, 50, 1)
    );
    let mut expected: Vec<UsageRecord> = records();
    expected.reverse();
    assert_eq!(page.records, expected);
    let page = client
        .list_spend_logs(authed(pb::ListSpendLogsRequest {
            filter: None,
            page: 2,
            page_size: 2,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&page.records), ["c", "b"]);
    assert_eq!(
        (page.total, page.page, page.page_size, page.total_pages),
        (5, 2, 2, 3)
    );
    // Filters: a key, an end user, a day.
    let filtered = |filter: pb::SpendLogFilter| pb::ListSpendLogsRequest {
        filter: Some(filter),
        page: 0,
        page_size: 0,
    };
    let page = client
        .list_spend_logs(authed(filtered(pb::SpendLogFilter {
            api_key: "k1".into(),
            ..Default::default()
        })))
        .await;
    // "k1" is not a SHA-256 hex, so it is hashed as a clear key: no record.
    assert_eq!(page.unwrap().into_inner().total, 0);
    let hashed = sha256_hex("sk-clear-k3");
    plane
        .store
        .insert_usage(&[record(
            "f",
            &hashed,
            "gpt",
            "u3",
            "",
            "",
            Some(0.125),
            &[],
            BASE + 500,
        )])
        .await
        .unwrap();
    let page = client
        .list_spend_logs(authed(filtered(pb::SpendLogFilter {
            api_key: "sk-clear-k3".into(),
            ..Default::default()
        })))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&page.records), ["f"]);
    let page = client
        .list_spend_logs(authed(filtered(pb::SpendLogFilter {
            end_user: "e1".into(),
            start_unix_ms: BASE,
            end_unix_ms: BASE + DAY_MS,
            ..Default::default()
        })))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&page.records), ["c", "a"]);
    assert_eq!(page.total, 2);
    let page = client
        .list_spend_logs(authed(filtered(pb::SpendLogFilter {
            request_id: "x-d".into(),
            ..Default::default()
        })))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&page.records), ["d"]);

    // Global spend: every known cost.
    let global = client
        .get_global_spend(authed(pb::GetGlobalSpendRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        global,
        pb::GlobalSpend {
            spend: 3.875,
            budget_reset_at_unix_ms: 0
        }
    );

    // Reports.
    let report = |group: pb::SpendReportGroup| pb::GetSpendReportRequest {
        start_unix_ms: BASE,
        end_unix_ms: BASE + 2 * DAY_MS,
        group_by: group as i32,
        api_key: String::new(),
        internal_user_id: String::new(),
    };
    let rows = client
        .get_spend_report(authed(report(pb::SpendReportGroup::Day)))
        .await
        .unwrap()
        .into_inner()
        .rows;
    let empty = ["", "", "", "", ""];
    assert_eq!(
        rows,
        vec![
            row(Some(BASE + DAY_MS), empty, 2.0, 2),
            row(Some(BASE), empty, 1.875, 4),
        ]
    );
    let rows = client
        .get_spend_report(authed(report(pb::SpendReportGroup::User)))
        .await
        .unwrap()
        .into_inner()
        .rows;
    assert_eq!(
        rows,
        vec![
            row(None, ["", "", "", "u1", "claude"], 2.0, 1),
            row(None, ["", "", "", "u2", "claude"], 1.0, 2),
            row(None, ["", "", "", "u1", "gpt"], 0.75, 2),
            row(None, ["", "", "", "u3", "gpt"], 0.125, 1),
        ]
    );
    let mut restricted = report(pb::SpendReportGroup::Model);
    restricted.internal_user_id = "u2".into();
    let rows = client
        .get_spend_report(authed(restricted))
        .await
        .unwrap()
        .into_inner()
        .rows;
    assert_eq!(rows, vec![row(None, ["", "", "k2", "", "claude"], 1.0, 2)]);

    // Tags: by spend.
    let tags = client
        .list_spend_tags(authed(pb::ListSpendTagsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .tags;
    assert_eq!(
        tags,
        vec![
            pb::TagSpend {
                tag: "beta".into(),
                log_count: 2,
                total_spend: 1.25
            },
            pb::TagSpend {
                tag: "prod".into(),
                log_count: 2,
                total_spend: 0.75
            },
        ]
    );
    let tags = client
        .list_spend_tags(authed(pb::ListSpendTagsRequest {
            start_unix_ms: BASE + 2_500,
            end_unix_ms: 0,
        }))
        .await
        .unwrap()
        .into_inner()
        .tags;
    assert_eq!(
        tags,
        vec![pb::TagSpend {
            tag: "beta".into(),
            log_count: 1,
            total_spend: 1.0
        }]
    );
    plane.stop().await;
}
on_both!(
    spend_over_grpc,
    spend_over_grpc_sqlite,
    spend_over_grpc_postgres
);

async fn spend_errors(db: Db) {
    let plane = Plane::start(db.url(), CONFIG).await;
    let mut client = plane.grpc_client().await;
    let status = client
        .get_global_spend(Request::new(pb::GetGlobalSpendRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let mut wrong = Request::new(pb::ListSpendTagsRequest::default());
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer sk-wrong".parse().unwrap());
    let status = client.list_spend_tags(wrong).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let invalid = |status: tonic::Status, param: &str| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with(param),
            "{param}: {}",
            status.message()
        );
    };
    let status = client
        .list_spend_logs(authed(pb::ListSpendLogsRequest {
            filter: None,
            page: 1,
            page_size: 1_001,
        }))
        .await
        .unwrap_err();
    invalid(status, "page_size");
    let status = client
        .list_spend_logs(authed(pb::ListSpendLogsRequest {
            filter: Some(pb::SpendLogFilter {
                start_unix_ms: BASE,
                end_unix_ms: BASE,
                ..Default::default()
            }),
            page: 0,
            page_size: 0,
        }))
        .await
        .unwrap_err();
    invalid(status, "filter.end_unix_ms");
    let status = client
        .get_spend_report(authed(pb::GetSpendReportRequest {
            end_unix_ms: BASE,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    invalid(status, "start_unix_ms");
    let status = client
        .get_spend_report(authed(pb::GetSpendReportRequest {
            start_unix_ms: BASE,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    invalid(status, "end_unix_ms");
    let status = client
        .get_spend_report(authed(pb::GetSpendReportRequest {
            start_unix_ms: BASE,
            end_unix_ms: BASE + DAY_MS,
            group_by: 99,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    invalid(status, "group_by");
    let status = client
        .list_spend_tags(authed(pb::ListSpendTagsRequest {
            start_unix_ms: BASE + 1,
            end_unix_ms: BASE,
        }))
        .await
        .unwrap_err();
    invalid(status, "end_unix_ms");
    plane.stop().await;
}
on_both!(spend_errors, spend_errors_sqlite, spend_errors_postgres);
