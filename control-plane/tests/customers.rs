//! Customers (LiteLLM's end users, `/customer/*` and `/end_user/*`) on SQLite and
//! PostgreSQL: fields round-trip exactly, spend and windows are the end user's
//! `spend_totals` row, bad or unenforceable fields are 400s naming the field, a customer's
//! budget is an END_USER entry of the snapshot's settings and its changes reach filters.
// Test helpers outside #[test] functions: a failure should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::oneshot;

use common::Update;
use tollgate::app::start_control_plane;
use tollgate::config::{self, LoadedConfig};
use tollgate::http_api;
use tollgate::manage::{iso8601, Manager};
use tollgate::proto::{self as pb, UsageRecord};
use tollgate::store::Store;
use tollgate::sync::SyncHub;

const MASTER: &str = "sk-test-master";
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

fn load(text: &str) -> LoadedConfig {
    config::parse(text, "customers-test.yaml", &|_| None).unwrap()
}

/// A database for one test: a SQLite file or a fresh PostgreSQL database.
enum Db {
    Sqlite(#[allow(dead_code)] tempfile::TempDir, String),
    Postgres(common::PgTestDb),
}

impl Db {
    async fn new(postgres: bool) -> Db {
        if postgres {
            Db::Postgres(common::PgTestDb::create().await)
        } else {
            let dir = tempfile::tempdir().unwrap();
            let url = format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("tollgate.db").display()
            );
            Db::Sqlite(dir, url)
        }
    }

    fn url(&self) -> &str {
        match self {
            Db::Sqlite(_, url) => url,
            Db::Postgres(db) => &db.url,
        }
    }
}

/// A control plane: gRPC and HTTP on ephemeral ports.
struct Plane {
    hub: Arc<SyncHub>,
    store: Store,
    grpc: SocketAddr,
    http: SocketAddr,
    stops: Vec<oneshot::Sender<()>>,
}

impl Plane {
    async fn start(url: &str, config: &str) -> Plane {
        let store = common::connect(url).await;
        let hub = start_control_plane(store.clone(), &load(config))
            .await
            .unwrap();
        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = grpc_listener.local_addr().unwrap();
        let http = http_listener.local_addr().unwrap();
        let (stop_grpc, grpc_stopped) = oneshot::channel::<()>();
        let (stop_http, http_stopped) = oneshot::channel::<()>();
        tokio::spawn({
            let hub = hub.clone();
            async move {
                tollgate::server::serve(hub, grpc_listener, async {
                    let _ = grpc_stopped.await;
                })
                .await
                .unwrap();
            }
        });
        tokio::spawn({
            let manager = Manager::new(hub.clone());
            async move {
                http_api::serve(manager, http_listener, async {
                    let _ = http_stopped.await;
                })
                .await
                .unwrap();
            }
        });
        Plane {
            hub,
            store,
            grpc,
            http,
            stops: vec![stop_grpc, stop_http],
        }
    }

    async fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.store.close().await;
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("http://{}{path}", self.http))
            .bearer_auth(MASTER)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn ok(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.post(path, body.clone()).await;
        assert_eq!(status, 200, "POST {path} {body}: {answer}");
        answer
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let response = reqwest::Client::new()
            .get(format!("http://{}{path}", self.http))
            .bearer_auth(MASTER)
            .query(query)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "GET {path} {query:?}");
        response.json().await.unwrap()
    }

    /// Asserts a 400 whose `param` is `param` and whose message names it.
    async fn bad(&self, path: &str, body: Value, param: &str) {
        let (status, answer) = self.post(path, body.clone()).await;
        assert_eq!(status, 400, "POST {path} {body}: {answer}");
        assert_eq!(
            answer["error"]["param"], param,
            "POST {path} {body}: {answer}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(param),
            "{answer}"
        );
    }

    /// A GET's status and body (for the error cases).
    async fn get_status(&self, path: &str, query: &[(&str, &str)]) -> (u16, Value) {
        let response = reqwest::Client::new()
            .get(format!("http://{}{path}", self.http))
            .bearer_auth(MASTER)
            .query(query)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn reset_at(&self, scope: &str, id: &str) -> Option<i64> {
        self.store.budget_reset_at(scope, id).await.unwrap()
    }
}

macro_rules! on_both {
    ($scenario:ident, $sqlite:ident, $postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $sqlite() {
            $scenario(Db::new(false).await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $postgres() {
            $scenario(Db::new(true).await).await;
        }
    };
}

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
