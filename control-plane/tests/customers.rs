//! Customers (LiteLLM's end users, `/customer/*` and `/end_user/*`) on SQLite and
//! PostgreSQL: fields round-trip exactly, spend and windows are the end user's
//! `spend_totals` row, bad or unenforceable fields are 400s naming the field, a customer's
//! budget is an END_USER entry of the snapshot's settings and its changes reach filters.
// Test helpers outside #[test] functions: a failure should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use serde_json::{json, Value};

use common::{on_both, Db, Plane, Update};
use tollgate::manage::iso8601;
use tollgate::proto::{self as pb, UsageRecord};

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

const CONFIG: &str = r#"
general_settings:
  master_key: sk-test-master
litellm_settings:
  max_end_user_budget: 2.5
model_list:
  - model_name: gpt
    litellm_params:
      model: openai/gpt-4o
      api_key: sk-upstream-config
"#;

/// A priced record of end user `end_user`.
fn usage(id: &str, end_user: &str, cost: f64) -> UsageRecord {
    UsageRecord {
        id: id.into(),
        model_name: "gpt".into(),
        deployment_id: "dep".into(),
        provider: "openai".into(),
        status: 200,
        prompt_tokens: Some(10),
        completion_tokens: Some(5),
        started_unix_ms: tollgate::store::now_unix_ms(),
        duration_ms: 100,
        end_user: end_user.into(),
        cost: Some(cost),
        ..Default::default()
    }
}

async fn round_trip(db: Db) {
    let plane = Plane::start(db.url(), CONFIG).await;
    // Spent before it is a customer: the spend is the end user's, and stays.
    plane
        .store
        .insert_usage(&[usage("r1", "acme", 0.25)])
        .await
        .unwrap();

    let created = plane
        .ok(
            "/customer/new",
            json!({"user_id": "acme", "alias": "Acme Inc", "max_budget": 10.5,
                   "soft_budget": 8, "budget_duration": "1d", "default_model": "gpt",
                   "metadata": {"tier": "gold"}, "blocked": false}),
        )
        .await;
    let row = plane.store.customer("acme").await.unwrap().unwrap();
    let window_end = row.created_at + DAY_MS;
    let expected = json!({
        "user_id": "acme",
        "alias": "Acme Inc",
        "blocked": false,
        "allowed_model_region": null,
        "default_model": "gpt",
        "budget_id": null,
        "metadata": {"tier": "gold"},
        "object_permission": null,
        "spend": 0.25,
        "max_budget": 10.5,
        "remaining_budget": 10.25,
        "soft_budget": 8.0,
        "budget_duration": "1d",
        "budget_reset_at": iso8601(window_end),
        "litellm_budget_table": {
            "max_budget": 10.5,
            "soft_budget": 8.0,
            "budget_duration": "1d",
            "budget_reset_at": iso8601(window_end),
            "tpm_limit": null,
            "rpm_limit": null,
            "max_parallel_requests": null,
            "model_max_budget": null,
        },
        "created_at": iso8601(row.created_at),
        "updated_at": iso8601(row.created_at),
    });
    assert_eq!(created, expected);
    assert_eq!(plane.reset_at("end_user", "acme").await, Some(window_end));
    assert_eq!(
        plane
            .get("/customer/info", &[("end_user_id", "acme")])
            .await,
        expected
    );
    // LiteLLM's older path answers the same.
    assert_eq!(
        plane
            .get("/end_user/info", &[("end_user_id", "acme")])
            .await,
        expected
    );

    // Without a budget: no budget table, no window, spend 0.
    let plain = plane.ok("/end_user/new", json!({"user_id": "bob"})).await;
    assert_eq!(plain["litellm_budget_table"], Value::Null);
    assert_eq!(plain["max_budget"], Value::Null);
    assert_eq!(plain["remaining_budget"], Value::Null);
    assert_eq!(plain["budget_reset_at"], Value::Null);
    assert_eq!(plain["spend"], 0.0);
    assert_eq!(plain["alias"], Value::Null);
    assert_eq!(plain["metadata"], json!({}));
    let list = plane.get("/customer/list", &[]).await;
    assert_eq!(list, json!([expected, plain]));

    // null clears, a value replaces, an absent field stays; a new length starts a new window.
    let updated = plane
        .ok(
            "/customer/update",
            json!({"user_id": "acme", "alias": null, "max_budget": 3,
                   "budget_duration": "2h"}),
        )
        .await;
    let row = plane.store.customer("acme").await.unwrap().unwrap();
    let window_end = row.updated_at + 2 * HOUR_MS;
    assert_eq!(updated["alias"], Value::Null);
    assert_eq!(updated["default_model"], "gpt");
    assert_eq!(updated["metadata"], json!({"tier": "gold"}));
    assert_eq!(
        updated["litellm_budget_table"],
        json!({
            "max_budget": 3.0,
            "soft_budget": 8.0,
            "budget_duration": "2h",
            "budget_reset_at": iso8601(window_end),
            "tpm_limit": null,
            "rpm_limit": null,
            "max_parallel_requests": null,
            "model_max_budget": null,
        })
    );
    assert_eq!(updated["updated_at"], iso8601(row.updated_at));
    assert_eq!(
        plane
            .get("/customer/info", &[("end_user_id", "acme")])
            .await,
        updated
    );

    // The budget clock starts the next window when this one ends: spend back to 0.
    assert_eq!(
        plane
            .store
            .reset_budget_windows(u64::try_from(window_end).unwrap())
            .await
            .unwrap(),
        1
    );
    let info = plane
        .get("/customer/info", &[("end_user_id", "acme")])
        .await;
    assert_eq!(info["spend"], 0.0);
    assert_eq!(info["budget_reset_at"], iso8601(window_end + 2 * HOUR_MS));
    plane.stop().await;
}
on_both!(round_trip, round_trip_sqlite, round_trip_postgres);

async fn validation(db: Db) {
    let plane = Plane::start(db.url(), CONFIG).await;
    plane.bad("/customer/new", json!({}), "user_id").await;
    plane
        .bad("/customer/new", json!({"user_id": " "}), "user_id")
        .await;
    plane
        .bad("/customer/new", json!({"user_id": 7}), "user_id")
        .await;
    for (body, param) in [
        (json!({"blocked": true}), "blocked"),
        (json!({"blocked": "yes"}), "blocked"),
        (
            json!({"allowed_model_region": "eu"}),
            "allowed_model_region",
        ),
        (json!({"budget_id": "free_tier"}), "budget_id"),
        (json!({"rpm_limit": 10}), "rpm_limit"),
        (json!({"tpm_limit": 10}), "tpm_limit"),
        (json!({"max_parallel_requests": 1}), "max_parallel_requests"),
        (json!({"model_max_budget": {"gpt": 1}}), "model_max_budget"),
        (json!({"spend": 1.5}), "spend"),
        (json!({"budget_reset_at": "2030-01-01"}), "budget_reset_at"),
        (
            json!({"object_permission": {"mcp_servers": ["s"]}}),
            "object_permission",
        ),
        (json!({"max_budget": -1}), "max_budget"),
        (json!({"max_budget": "10"}), "max_budget"),
        (json!({"soft_budget": -0.5}), "soft_budget"),
        (json!({"budget_duration": "soon"}), "budget_duration"),
        (json!({"budget_duration": "0s"}), "budget_duration"),
        (json!({"default_model": "nope"}), "default_model"),
        (json!({"metadata": [1]}), "metadata"),
        (json!({"alias": ""}), "alias"),
    ] {
        let mut create = body.clone();
        create["user_id"] = "c1".into();
        plane.bad("/customer/new", create, param).await;
    }
    // Nothing was stored by the refused requests.
    assert_eq!(plane.get("/customer/list", &[]).await, json!([]));

    plane
        .ok("/customer/new", json!({"user_id": "c1", "max_budget": 1}))
        .await;
    let (status, answer) = plane.post("/customer/new", json!({"user_id": "c1"})).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["param"], "user_id");
    for (body, param) in [
        (json!({"blocked": true}), "blocked"),
        (json!({"budget_id": "b"}), "budget_id"),
        (json!({"max_budget": -2}), "max_budget"),
        (json!({"default_model": "nope"}), "default_model"),
    ] {
        let mut update = body.clone();
        update["user_id"] = "c1".into();
        plane.bad("/customer/update", update, param).await;
    }
    plane
        .bad("/customer/update", json!({"max_budget": 2}), "user_id")
        .await;
    let (status, answer) = plane
        .post(
            "/customer/update",
            json!({"user_id": "ghost", "max_budget": 2}),
        )
        .await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["error"]["param"], "user_id");
    assert_eq!(
        answer["error"]["message"],
        "user_id: End User Id=ghost does not exist in db"
    );
    // The refused updates changed nothing.
    let info = plane.get("/customer/info", &[("end_user_id", "c1")]).await;
    assert_eq!(info["max_budget"], 1.0);

    let (status, answer) = plane
        .get_status("/customer/info", &[("end_user_id", "ghost")])
        .await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["error"]["param"], "end_user_id");
    let (status, answer) = plane.get_status("/customer/info", &[]).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["param"], "end_user_id");
    for path in ["/customer/block", "/customer/unblock", "/end_user/block"] {
        plane
            .bad(path, json!({"user_ids": ["c1"]}), "user_ids")
            .await;
    }
    plane.stop().await;
}
on_both!(validation, validation_sqlite, validation_postgres);

async fn delete(db: Db) {
    let plane = Plane::start(db.url(), CONFIG).await;
    for id in ["a", "b", "c"] {
        plane
            .ok(
                "/customer/new",
                json!({"user_id": id, "max_budget": 1, "budget_duration": "1d"}),
            )
            .await;
    }
    plane.bad("/customer/delete", json!({}), "user_ids").await;
    plane
        .bad("/customer/delete", json!({"user_ids": []}), "user_ids")
        .await;
    plane
        .bad("/customer/delete", json!({"user_ids": "a"}), "user_ids")
        .await;
    plane
        .bad(
            "/customer/delete",
            json!({"user_ids": ["a", ""]}),
            "user_ids[1]",
        )
        .await;
    // An unknown id deletes nothing.
    let (status, answer) = plane
        .post("/customer/delete", json!({"user_ids": ["a", "a", "ghost"]}))
        .await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["error"]["param"], "user_ids[2]");
    assert_eq!(
        plane
            .get("/customer/list", &[])
            .await
            .as_array()
            .unwrap()
            .len(),
        3
    );

    let deleted = plane
        .ok("/end_user/delete", json!({"user_ids": ["a", "c"]}))
        .await;
    assert_eq!(
        deleted,
        json!({"deleted_customers": 2,
               "message": "Successfully deleted customers with ids: [\"a\", \"c\"]"})
    );
    let ids: Vec<Value> = plane
        .get("/customer/list", &[])
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|customer| customer["user_id"].clone())
        .collect();
    assert_eq!(ids, [json!("b")]);
    let (status, _) = plane
        .get_status("/customer/info", &[("end_user_id", "a")])
        .await;
    assert_eq!(status, 404);
    // A deleted customer's window is gone; the kept one's runs.
    assert_eq!(plane.reset_at("end_user", "a").await, None);
    assert!(plane.reset_at("end_user", "b").await.is_some());
    // The id is free again.
    plane.ok("/customer/new", json!({"user_id": "a"})).await;
    plane.stop().await;
}
on_both!(delete, delete_sqlite, delete_postgres);

fn end_user_budget(id: &str, max_budget: Option<f64>, soft_budget: Option<f64>) -> pb::Budget {
    pb::Budget {
        scope: pb::BudgetScope::EndUser as i32,
        id: id.into(),
        max_budget,
        soft_budget,
    }
}

fn budgets_of(snapshot: &pb::Snapshot) -> Vec<pb::Budget> {
    snapshot.settings.clone().unwrap().budgets
}

async fn snapshot_and_filters(db: Db) {
    let plane = Plane::start(db.url(), CONFIG).await;
    plane
        .ok(
            "/user/new",
            json!({"user_id": "u1", "max_budget": 9, "auto_create_key": false}),
        )
        .await;
    plane
        .ok(
            "/customer/new",
            json!({"user_id": "zed", "max_budget": 5.5, "soft_budget": 4}),
        )
        .await;
    plane
        .ok(
            "/customer/new",
            json!({"user_id": "amy", "soft_budget": 1.25}),
        )
        .await;
    // No budget: not an entry (max_end_user_budget applies).
    plane
        .ok(
            "/customer/new",
            json!({"user_id": "nobudget", "alias": "n"}),
        )
        .await;
    plane.hub.refresh().await.unwrap();

    let mut filter = common::FakeFilter::connect(plane.grpc).await;
    let snapshot = filter.next_snapshot().await;
    filter.hello("envoy-c", "1", snapshot.version).await;
    assert_eq!(
        budgets_of(&snapshot),
        vec![
            end_user_budget("", Some(2.5), None),
            pb::Budget {
                scope: pb::BudgetScope::User as i32,
                id: "u1".into(),
                max_budget: Some(9.0),
                soft_budget: None,
            },
            end_user_budget("amy", None, Some(1.25)),
            end_user_budget("zed", Some(5.5), Some(4.0)),
        ]
    );

    // A customer's budget change: a settings change, no key.
    plane
        .ok(
            "/customer/update",
            json!({"user_id": "amy", "max_budget": 0.75, "soft_budget": null}),
        )
        .await;
    let delta = match filter.next_update().await {
        Update::Delta(delta) => delta,
        Update::Snapshot(snapshot) => panic!("a full snapshot: {}", snapshot.version),
    };
    assert!(delta.keys.is_empty(), "{:?}", delta.keys);
    assert_eq!(
        delta.settings.unwrap().budgets,
        vec![
            end_user_budget("", Some(2.5), None),
            pb::Budget {
                scope: pb::BudgetScope::User as i32,
                id: "u1".into(),
                max_budget: Some(9.0),
                soft_budget: None,
            },
            end_user_budget("amy", Some(0.75), None),
            end_user_budget("zed", Some(5.5), Some(4.0)),
        ]
    );

    // Deleting one removes its entry.
    plane
        .ok("/customer/delete", json!({"user_ids": ["zed"]}))
        .await;
    let held = filter
        .snapshot_where(|snapshot| budgets_of(snapshot).len() == 3)
        .await;
    assert_eq!(
        budgets_of(&held).last(),
        Some(&end_user_budget("amy", Some(0.75), None))
    );
    plane.stop().await;
}
on_both!(
    snapshot_and_filters,
    snapshot_and_filters_sqlite,
    snapshot_and_filters_postgres
);
