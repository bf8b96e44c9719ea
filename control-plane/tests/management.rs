//! The management API over real HTTP and gRPC on 127.0.0.1, on SQLite and PostgreSQL:
//! every endpoint, bad input, storage (hashed keys, transactions, restarts), the live push
//! to connected filter streams, and two replicas on one PostgreSQL database.
// Test helpers outside #[test] functions: a failure should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tonic::{Code, Request};

use common::{on_both, Db, Plane, MASTER};
use tollgate::config::{self, LoadedConfig};
use tollgate::manage::Manager;
use tollgate::proto::{self as pb, Snapshot};
use tollgate::store::sha256_hex;
use tollgate::sync::{self, SyncHub};

/// The hub's snapshot once it has caught up with every committed change (publishing runs
/// in the background after a change, coalesced).
/// It is also what a full read of the store gives: the hub reads only what changed since
/// the version it serves, so a write that does not record its change would show here.
async fn settled(plane: &Plane) -> std::sync::Arc<tollgate::proto::Snapshot> {
    let stored = plane.store.stored_version().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while plane.hub.current_version() < stored {
        assert!(
            Instant::now() < deadline,
            "snapshot never caught up with the store"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let served = plane.hub.current();
    let full = sync::load_snapshot(&plane.store).await.unwrap();
    if full.version == served.version {
        assert_eq!(*served, full, "the served snapshot is not the stored state");
    }
    served
}

const WAIT: Duration = Duration::from_secs(10);

const CONFIG: &str = r#"
general_settings:
  master_key: sk-test-master
model_list:
  - model_name: gpt
    litellm_params:
      model: openai/gpt-4o
      api_key: sk-upstream-config
  - model_name: claude
    litellm_params:
      model: anthropic/claude-sonnet
      api_base: http://127.0.0.1:9/
"#;

fn load(text: &str) -> LoadedConfig {
    config::parse(text, "management-test.yaml", &|_| None).unwrap()
}

// Helpers only these tests use, on the shared `Db` and `Plane`.

impl Db {
    /// Everything stored, as text: every row of every table (PostgreSQL) or the raw
    /// database files (SQLite, WAL included).
    async fn dump(&self) -> String {
        match self {
            Db::Sqlite(dir, _) => {
                let mut text = String::new();
                for entry in std::fs::read_dir(dir.path()).unwrap() {
                    let bytes = std::fs::read(entry.unwrap().path()).unwrap();
                    text.push_str(&String::from_utf8_lossy(&bytes));
                }
                text
            }
            Db::Postgres(db) => {
                use sqlx::{Connection, Row};
                let mut connection = sqlx::PgConnection::connect(&db.url).await.unwrap();
                let mut text = String::new();
                for table in [
                    "virtual_keys",
                    "users",
                    "teams",
                    "team_members",
                    "deployments",
                    "settings",
                    "state_version",
                ] {
                    let rows = sqlx::query(&format!("SELECT t::text AS row FROM {table} t"))
                        .fetch_all(&mut connection)
                        .await
                        .unwrap();
                    for row in rows {
                        text.push_str(&row.get::<String, _>("row"));
                        text.push('\n');
                    }
                }
                connection.close().await.unwrap();
                text
            }
        }
    }
}

impl Plane {
    /// An HTTP client of the plane's API with the master key.
    fn api(&self) -> Api {
        Api {
            base: format!("http://{}", self.http),
            key: Some(MASTER.to_string()),
            http: reqwest::Client::new(),
        }
    }
}

/// HTTP client of the API returning (status, JSON body).
struct Api {
    base: String,
    key: Option<String>,
    http: reqwest::Client,
}

impl Api {
    fn with_key(&self, key: Option<&str>) -> Api {
        Api {
            base: self.base.clone(),
            key: key.map(str::to_string),
            http: self.http.clone(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let request = match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text:?}"));
        (status, body)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    async fn post_raw(&self, path: &str, body: &str) -> (u16, Value) {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.base)).query(query))
            .await
    }

    /// Asserts a 200 and returns the body.
    async fn ok(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.post(path, body.clone()).await;
        assert_eq!(status, 200, "POST {path} {body}: {answer}");
        answer
    }

    async fn ok_get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let (status, answer) = self.get(path, query).await;
        assert_eq!(status, 200, "GET {path} {query:?}: {answer}");
        answer
    }
}

/// Asserts an OpenAI/LiteLLM-shaped error with this status and param.
fn assert_error(answer: &(u16, Value), status: u16, param: Option<&str>) {
    let (got, body) = answer;
    assert_eq!(*got, status, "{body}");
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert_eq!(error["code"], status.to_string(), "{body}");
    if let Some(param) = param {
        assert_eq!(error["param"], param, "{body}");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains(param.split('[').next().unwrap()),
            "message does not name the field: {body}"
        );
    }
}

fn key_in<'a>(snapshot: &'a Snapshot, token: &str) -> Option<&'a pb::VirtualKey> {
    snapshot.keys.iter().find(|key| key.key_sha256 == token)
}

// ---------------------------------------------------------------------------------------
// Keys over HTTP.

async fn keys_lifecycle(db: Db) {
    let plane = Plane::start(db.url(), CONFIG).await;
    let api = plane.api();

    let created = api
        .ok(
            "/key/generate",
            json!({"key_alias": "app-1", "user_id": "alice", "models": ["gpt"],
                   "duration": "1h", "metadata": {"env": "test"}}),
        )
        .await;
    let key = created["key"].as_str().unwrap().to_string();
    let token = sha256_hex(&key);
    assert!(key.starts_with("sk-"), "{created}");
    assert_eq!(created["token"], token);
    assert_eq!(
        created["key_name"],
        format!("sk-...{}", &key[key.len() - 4..])
    );
    assert_eq!(created["key_alias"], "app-1");
    assert_eq!(created["user_id"], "alice");
    assert_eq!(created["team_id"], Value::Null);
    assert_eq!(created["models"], json!(["gpt"]));
    assert_eq!(created["metadata"], json!({"env": "test"}));
    assert_eq!(created["blocked"], false);
    assert!(
        created["expires"].as_str().unwrap().ends_with('Z'),
        "{created}"
    );

    // Info by clear key and by token.
    for name in [key.as_str(), token.as_str()] {
        let info = api.ok_get("/key/info", &[("key", name)]).await;
        assert_eq!(info["key"], name);
        assert_eq!(info["info"]["token"], token);
        assert_eq!(info["info"]["key_alias"], "app-1");
        assert!(
            info["info"].get("key").is_none(),
            "clear key leaked: {info}"
        );
    }

    // A second key without an alias; list, filters, pagination, full objects.
    let second = api.ok("/key/generate", json!({})).await;
    let second_key = second["key"].as_str().unwrap().to_string();
    assert_eq!(second["key_alias"], Value::Null);
    assert_eq!(second["expires"], Value::Null);
    let list = api.ok_get("/key/list", &[]).await;
    assert_eq!(list["total_count"], 2);
    assert_eq!(list["keys"], json!([token, sha256_hex(&second_key)]));
    let list = api.ok_get("/key/list", &[("user_id", "alice")]).await;
    assert_eq!(list["keys"], json!([token]));
    let list = api
        .ok_get(
            "/key/list",
            &[("size", "1"), ("page", "2"), ("return_full_object", "true")],
        )
        .await;
    assert_eq!(list["total_pages"], 2);
    assert_eq!(list["current_page"], 2);
    assert_eq!(list["keys"][0]["token"], sha256_hex(&second_key));

    // Update.
    let updated = api
        .ok(
            "/key/update",
            json!({"key": key, "key_alias": "app-1b", "models": ["gpt", "claude"], "duration": null}),
        )
        .await;
    assert_eq!(updated["key_alias"], "app-1b");
    assert_eq!(updated["models"], json!(["gpt", "claude"]));
    assert_eq!(updated["expires"], Value::Null);
    assert_eq!(
        updated["metadata"],
        json!({"env": "test"}),
        "untouched fields stay"
    );

    // Block / unblock.
    let blocked = api.ok("/key/block", json!({"key": key})).await;
    assert_eq!(blocked["blocked"], true);
    let info = api.ok_get("/key/info", &[("key", &key)]).await;
    assert_eq!(info["info"]["blocked"], true);
    let unblocked = api.ok("/key/unblock", json!({"key": token})).await;
    assert_eq!(unblocked["blocked"], false);

    // Regenerate: same row, new key; the old one is gone.
    let regenerated = api.ok("/key/regenerate", json!({"key": key})).await;
    let new_key = regenerated["key"].as_str().unwrap().to_string();
    assert_ne!(new_key, key);
    assert_eq!(regenerated["token"], sha256_hex(&new_key));
    assert_eq!(regenerated["key_alias"], "app-1b");
    assert_error(
        &api.get("/key/info", &[("key", &key)]).await,
        404,
        Some("key"),
    );
    api.ok_get("/key/info", &[("key", &new_key)]).await;
    // LiteLLM's path form, with a caller-chosen key.
    let by_path = api
        .ok(
            &format!("/key/{new_key}/regenerate"),
            json!({"new_key": "sk-chosen-by-me"}),
        )
        .await;
    assert_eq!(by_path["key"], "sk-chosen-by-me");
    let current = "sk-chosen-by-me".to_string();
    // The filters' snapshot follows: the regenerated hashes leave it.
    let snapshot = settled(&plane).await;
    assert!(key_in(&snapshot, &sha256_hex(&key)).is_none());
    assert!(key_in(&snapshot, &sha256_hex(&new_key)).is_none());
    assert!(key_in(&snapshot, &sha256_hex(&current)).is_some());

    // The clear keys never reach the database.
    let dump = db.dump().await;
    for clear in [&key, &second_key, &new_key, &current] {
        assert!(!dump.contains(clear.as_str()), "clear key {clear} stored");
    }
    assert!(dump.contains(&sha256_hex(&current)), "token not stored?");

    // Delete by key and by alias.
    let deleted = api
        .ok(
            "/key/delete",
            json!({"keys": [second_key], "key_aliases": ["app-1b"]}),
        )
        .await;
    assert_eq!(deleted["deleted_keys"], json!([second_key, "app-1b"]));
    assert_eq!(api.ok_get("/key/list", &[]).await["total_count"], 0);
    assert_eq!(settled(&plane).await.keys, []);
    assert_error(
        &api.get("/key/info", &[("key", &current)]).await,
        404,
        Some("key"),
    );

    plane.stop().await;
}
on_both!(
    keys_lifecycle,
    sqlite_keys_lifecycle,
    postgres_keys_lifecycle
);

// ---------------------------------------------------------------------------------------
// Users and teams over HTTP; admin keys.

async fn users_teams_and_admin_keys(db: Db) {
    let plane = Plane::start(db.url(), CONFIG).await;
    let api = plane.api();

    let user = api
        .ok(
            "/user/new",
            json!({"user_id": "root", "user_email": "root@example.com", "user_role": "proxy_admin"}),
        )
        .await;
    assert_eq!(user["user_id"], "root");
    assert_eq!(user["user_role"], "proxy_admin");
    let admin_key = user["key"].as_str().unwrap().to_string();
    assert_eq!(user["token"], sha256_hex(&admin_key));

    // The admin key may use the API; an internal user's key may not.
    let admin = api.with_key(Some(&admin_key));
    let plain = admin
        .ok("/user/new", json!({"user_id": "bob", "models": ["gpt"]}))
        .await;
    assert_eq!(plain["user_role"], "internal_user");
    let bob_key = plain["key"].as_str().unwrap().to_string();
    assert_error(
        &api.with_key(Some(&bob_key))
            .post("/key/generate", json!({}))
            .await,
        403,
        None,
    );
    let no_key = admin
        .ok(
            "/user/new",
            json!({"user_email": "carol@example.com", "auto_create_key": false}),
        )
        .await;
    assert_eq!(no_key["key"], Value::Null);
    let carol = no_key["user_id"].as_str().unwrap().to_string();
    assert_eq!(carol.len(), 36, "generated id: {no_key}");

    // A blocked admin key stops working.
    api.ok("/key/block", json!({"key": admin_key})).await;
    assert_error(&admin.get("/model/info", &[]).await, 401, None);
    api.ok("/key/unblock", json!({"key": admin_key})).await;
    admin.ok_get("/model/info", &[]).await;

    // Teams.
    let team = api
        .ok(
            "/team/new",
            json!({"team_alias": "search", "models": ["claude"],
                   "members_with_roles": [{"user_id": "bob", "role": "admin"}]}),
        )
        .await;
    let team_id = team["team_id"].as_str().unwrap().to_string();
    assert_eq!(team["team_alias"], "search");
    assert_eq!(
        team["members_with_roles"],
        json!([{"user_id": "bob", "user_email": null, "role": "admin"}])
    );
    let added = api
        .ok(
            "/team/member_add",
            json!({"team_id": team_id, "member": [{"user_id": carol, "role": "user"},
                                                  {"user_email": "dave@example.com"}]}),
        )
        .await;
    let members = added["members_with_roles"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{added}");
    assert_eq!(
        added["updated_users"].as_array().unwrap().len(),
        2,
        "{added}"
    );
    let dave = members
        .iter()
        .find(|m| m["user_email"] == "dave@example.com")
        .unwrap()["user_id"]
        .as_str()
        .unwrap()
        .to_string();
    api.ok_get("/user/info", &[("user_id", &dave)]).await;

    // A team key inherits the team's models in the snapshot.
    let team_key = api.ok("/key/generate", json!({"team_id": team_id})).await;
    let info = api.ok_get("/team/info", &[("team_id", &team_id)]).await;
    assert_eq!(info["team_id"], team_id);
    assert_eq!(info["team_info"]["team_alias"], "search");
    assert_eq!(info["keys"][0]["token"], team_key["token"]);
    let snapshot = settled(&plane).await;
    let key = key_in(&snapshot, team_key["token"].as_str().unwrap()).unwrap();
    assert_eq!(key.models, ["claude"]);
    assert_eq!(key.team_id, team_id);

    let bob = api.ok_get("/user/info", &[("user_id", "bob")]).await;
    assert_eq!(bob["user_id"], "bob");
    assert_eq!(bob["user_info"]["models"], json!(["gpt"]));
    assert_eq!(bob["user_info"]["teams"], json!([team_id]));
    assert_eq!(bob["teams"][0]["team_alias"], "search");
    assert_eq!(bob["keys"][0]["token"], sha256_hex(&bob_key));

    plane.stop().await;
}
on_both!(
    users_teams_and_admin_keys,
    sqlite_users_teams_and_admin_keys,
    postgres_users_teams_and_admin_keys
);

// ---------------------------------------------------------------------------------------
// Bad input over HTTP, and nothing half-written.

async fn bad_input(db: Db) {
    let plane = Plane::start(db.url(), CONFIG).await;
    let api = plane.api();
    let key = api.ok("/key/generate", json!({"key_alias": "taken"})).await["key"]
        .as_str()
        .unwrap()
        .to_string();
    api.ok("/team/new", json!({"team_id": "t1", "team_alias": "alpha"}))
        .await;
    api.ok("/user/new", json!({"user_id": "u1"})).await;

    // Authentication on every endpoint.
    let endpoints: [(&str, bool); 19] = [
        ("/key/generate", true),
        ("/key/info", false),
        ("/key/update", true),
        ("/key/regenerate", true),
        ("/key/delete", true),
        ("/key/list", false),
        ("/key/block", true),
        ("/key/unblock", true),
        ("/user/new", true),
        ("/user/info", false),
        ("/team/new", true),
        ("/team/info", false),
        ("/team/member_add", true),
        ("/model/new", true),
        ("/model/info", false),
        ("/model/update", true),
        ("/model/delete", true),
        ("/key/x/regenerate", true),
        ("/key/generate", true),
    ];
    for credential in [None, Some("sk-wrong"), Some("")] {
        let client = api.with_key(credential);
        for (path, is_post) in endpoints {
            let answer = if is_post {
                client.post(path, json!({})).await
            } else {
                client.get(path, &[]).await
            };
            assert_error(&answer, 401, None);
        }
    }

    // Body shape.
    assert_error(
        &api.post_raw("/key/generate", "{not json").await,
        400,
        Some("body"),
    );
    assert_error(
        &api.post_raw("/key/generate", "[1]").await,
        400,
        Some("body"),
    );
    assert_error(&api.post_raw("/key/update", "").await, 400, Some("body"));
    // Wrong types, per field.
    for (path, body, param) in [
        ("/key/generate", json!({"key_alias": 5}), "key_alias"),
        ("/key/generate", json!({"models": "gpt"}), "models"),
        ("/key/generate", json!({"models": ["gpt", 3]}), "models[1]"),
        ("/key/generate", json!({"metadata": [1]}), "metadata"),
        ("/key/generate", json!({"duration": "soon"}), "duration"),
        ("/key/generate", json!({"blocked": "yes"}), "blocked"),
        ("/key/generate", json!({"key": "not-sk"}), "key"),
        ("/key/generate", json!({"key_alias": ""}), "key_alias"),
        ("/key/update", json!({}), "key"),
        ("/key/update", json!({"key": key, "models": {}}), "models"),
        ("/key/update", json!({"key": key, "blocked": 1}), "blocked"),
        ("/key/regenerate", json!({}), "key"),
        ("/key/block", json!({"key": 7}), "key"),
        ("/key/unblock", json!({}), "key"),
        ("/key/delete", json!({}), "keys"),
        ("/key/delete", json!({"keys": "abc"}), "keys"),
        ("/user/new", json!({"user_role": "emperor"}), "user_role"),
        ("/user/new", json!({"user_id": 12}), "user_id"),
        (
            "/team/new",
            json!({"members_with_roles": {"user_id": "x"}}),
            "members_with_roles",
        ),
        (
            "/team/new",
            json!({"members_with_roles": [{"user_id": "x", "role": "boss"}]}),
            "members_with_roles[0].role",
        ),
        (
            "/team/new",
            json!({"members_with_roles": [{"role": "user"}]}),
            "members_with_roles[0].user_id",
        ),
        ("/team/new", json!({"team_alias": ["a"]}), "team_alias"),
        (
            "/team/member_add",
            json!({"member": {"user_id": "u1"}}),
            "team_id",
        ),
        ("/team/member_add", json!({"team_id": "t1"}), "member"),
        (
            "/team/member_add",
            json!({"team_id": "t1", "member": [{"user_id": 1}]}),
            "member[0].user_id",
        ),
        (
            "/model/new",
            json!({"litellm_params": {"model": "openai/x"}}),
            "model_name",
        ),
        ("/model/new", json!({"model_name": "m"}), "litellm_params"),
        (
            "/model/new",
            json!({"model_name": "m", "litellm_params": "x"}),
            "litellm_params",
        ),
        (
            "/model/new",
            json!({"model_name": "m", "litellm_params": {}}),
            "litellm_params.model",
        ),
        (
            "/model/new",
            json!({"model_name": "m", "litellm_params": {"model": "gpt-4o"}}),
            "litellm_params.model",
        ),
        (
            "/model/new",
            json!({"model_name": "m", "litellm_params": {"model": "sagemaker_chat/g"}}),
            "litellm_params.model",
        ),
        (
            "/model/new",
            json!({"model_name": "m", "litellm_params": {"model": "openai/x", "api_base": "ftp://x"}}),
            "litellm_params.api_base",
        ),
        (
            "/model/new",
            json!({"model_name": "m", "litellm_params": {"model": "openai/x", "max_tokens": "many"}}),
            "litellm_params.max_tokens",
        ),
        (
            "/model/new",
            json!({"model_name": "m", "litellm_params": {"model": "openai/x"}, "model_info": {"id": ["x"]}}),
            "model_info.id",
        ),
        ("/model/update", json!({}), "model_info.id"),
        ("/model/delete", json!({}), "id"),
    ] {
        let answer = api.post(path, body.clone()).await;
        assert_eq!(answer.0, 400, "{path} {body}: {}", answer.1);
        assert_error(&answer, 400, Some(param));
    }
    for (path, param) in [
        ("/key/info", "key"),
        ("/user/info", "user_id"),
        ("/team/info", "team_id"),
    ] {
        // /key/info without a key answers for the caller's key: the master key is none.
        let answer = api.get(path, &[]).await;
        if path == "/key/info" {
            assert_error(&answer, 404, Some(param));
        } else {
            assert_error(&answer, 400, Some(param));
        }
    }
    assert_error(
        &api.get("/key/list", &[("page", "0")]).await,
        400,
        Some("page"),
    );

    // Unknown ids.
    for (path, body, param) in [
        ("/key/update", json!({"key": "sk-unknown-key"}), "key"),
        ("/key/block", json!({"key": "sk-unknown-key"}), "key"),
        ("/key/regenerate", json!({"key": "sk-unknown-key"}), "key"),
        (
            "/key/generate",
            json!({"team_id": "no-such-team"}),
            "team_id",
        ),
        (
            "/key/update",
            json!({"key": key, "team_id": "no-such-team"}),
            "team_id",
        ),
        (
            "/team/member_add",
            json!({"team_id": "nope", "member": {"user_id": "u1"}}),
            "team_id",
        ),
        ("/model/update", json!({"model_info": {"id": "nope"}}), "id"),
        ("/model/delete", json!({"id": "nope"}), "id"),
    ] {
        assert_error(&api.post(path, body).await, 404, Some(param));
    }
    assert_error(
        &api.get("/user/info", &[("user_id", "nope")]).await,
        404,
        Some("user_id"),
    );
    assert_error(
        &api.get("/team/info", &[("team_id", "nope")]).await,
        404,
        Some("team_id"),
    );
    assert_error(
        &api.get("/model/info", &[("litellm_model_id", "nope")])
            .await,
        404,
        Some("id"),
    );

    // Duplicates.
    for (path, body, param) in [
        ("/key/generate", json!({"key_alias": "taken"}), "key_alias"),
        ("/key/generate", json!({"key": key}), "key"),
        ("/team/new", json!({"team_id": "t1"}), "team_id"),
        ("/team/new", json!({"team_alias": "alpha"}), "team_alias"),
        ("/user/new", json!({"user_id": "u1"}), "user_id"),
        (
            "/model/new",
            json!({"model_name": "m", "litellm_params": {"model": "openai/x"}, "model_info": {"id": "m-1"}}),
            "model_info.id",
        ),
    ] {
        if path == "/model/new" {
            api.ok(path, body.clone()).await;
        }
        assert_error(&api.post(path, body).await, 409, Some(param));
    }
    api.ok(
        "/team/member_add",
        json!({"team_id": "t1", "member": {"user_id": "u1"}}),
    )
    .await;
    assert_error(
        &api.post(
            "/team/member_add",
            json!({"team_id": "t1", "member": {"user_id": "u1"}}),
        )
        .await,
        409,
        Some("member"),
    );
    let other = api.ok("/key/generate", json!({})).await;
    assert_error(
        &api.post(
            "/key/update",
            json!({"key": other["key"], "key_alias": "taken"}),
        )
        .await,
        409,
        Some("key_alias"),
    );

    // Unknown path and wrong method.
    assert_error(&api.get("/key/nothing", &[]).await, 404, None);
    assert_error(&api.get("/key/generate", &[]).await, 405, None);

    // Nothing half-written: multi-row operations that fail part-way leave no trace.
    let before = api.ok_get("/key/list", &[]).await["total_count"].clone();
    let answer = api
        .post("/key/delete", json!({"keys": [key, "sk-not-there"]}))
        .await;
    assert_error(&answer, 404, Some("keys[1]"));
    assert_eq!(api.ok_get("/key/list", &[]).await["total_count"], before);
    api.ok_get("/key/info", &[("key", &key)]).await;
    // A team whose second member is a duplicate of the first: neither the team nor the
    // user its first member would have created exist.
    let answer = api
        .post(
            "/team/new",
            json!({"team_id": "t2", "members_with_roles": [{"user_id": "fresh"}, {"user_id": "fresh"}]}),
        )
        .await;
    assert_error(&answer, 409, Some("member"));
    assert_error(
        &api.get("/team/info", &[("team_id", "t2")]).await,
        404,
        Some("team_id"),
    );
    assert_error(
        &api.get("/user/info", &[("user_id", "fresh")]).await,
        404,
        Some("user_id"),
    );
    // member_add with one good and one duplicate member adds neither.
    let answer = api
        .post(
            "/team/member_add",
            json!({"team_id": "t1", "member": [{"user_id": "newbie"}, {"user_id": "u1"}]}),
        )
        .await;
    assert_error(&answer, 409, Some("member"));
    let team = api.ok_get("/team/info", &[("team_id", "t1")]).await;
    assert_eq!(
        team["team_info"]["members_with_roles"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_error(
        &api.get("/user/info", &[("user_id", "newbie")]).await,
        404,
        Some("user_id"),
    );
    // A failed /user/new with a taken key alias creates no user.
    let answer = api
        .post("/user/new", json!({"user_id": "u9", "key_alias": "taken"}))
        .await;
    assert_error(&answer, 409, Some("key_alias"));
    assert_error(
        &api.get("/user/info", &[("user_id", "u9")]).await,
        404,
        Some("user_id"),
    );

    plane.stop().await;
}
on_both!(bad_input, sqlite_bad_input, postgres_bad_input);

// ---------------------------------------------------------------------------------------
// os.environ/ from the management API; provider keys at rest and in answers.

/// `CONFIG` allowing the API to read variables named `CARGO_PKG_*` (cargo sets them for every
/// test process, so the values are known without changing the environment).
const CONFIG_WITH_ENV_PREFIX: &str = r#"
general_settings:
  master_key: sk-test-master
  api_env_prefixes: [CARGO_PKG_]
model_list:
  - model_name: gpt
    litellm_params:
      model: openai/gpt-4o
      api_key: sk-upstream-config
"#;

fn model_entry(name: &str, params: Value) -> Value {
    let mut litellm_params =
        json!({"model": "openai/gpt-4o-mini", "api_base": "http://127.0.0.1:9/v1"});
    for (field, value) in params.as_object().unwrap() {
        litellm_params[field] = value.clone();
    }
    json!({"model_name": name, "litellm_params": litellm_params})
}

async fn api_env_references(db: Db) {
    let package = std::env::var("CARGO_PKG_NAME").unwrap();
    let version = std::env::var("CARGO_PKG_VERSION").unwrap();
    let plane = Plane::start(db.url(), CONFIG_WITH_ENV_PREFIX).await;
    let api = plane.api();
    // The repro: neither the model name nor a key outside the allowlist is read.
    for (entry, param) in [
        (model_entry("os.environ/HOME", json!({})), "model_name"),
        (
            model_entry("m", json!({"api_key": "os.environ/PATH"})),
            "litellm_params.api_key",
        ),
        (
            model_entry("m", json!({"api_key": "os.environ/CARGO_MANIFEST_DIR"})),
            "litellm_params.api_key",
        ),
        (
            model_entry("m", json!({"api_base": "os.environ/CARGO_PKG_NAME"})),
            "litellm_params.api_base",
        ),
        (
            model_entry("m", json!({"model": "os.environ/CARGO_PKG_NAME"})),
            "litellm_params.model",
        ),
        (
            model_entry("m", json!({"api_version": "os.environ/CARGO_PKG_VERSION"})),
            "litellm_params.api_version",
        ),
        (
            json!({"model_name": "m", "litellm_params": {"model": "openai/x"},
                "model_info": {"owner": "os.environ/CARGO_PKG_NAME"}}),
            "model_info.owner",
        ),
    ] {
        let answer = api.post("/model/new", entry.clone()).await;
        assert_error(&answer, 400, Some(param));
        let text = answer.1.to_string();
        assert!(
            !text.contains(&package) || param == "litellm_params.api_key",
            "{text}"
        );
        assert!(!text.contains("/root") && !text.contains("/usr/"), "{text}");
    }
    let answer = api
        .post(
            "/model/new",
            model_entry("m", json!({"api_key": "os.environ/PATH"})),
        )
        .await;
    assert_eq!(
        answer.1["error"]["message"],
        "litellm_params.api_key: os.environ/PATH is not allowed: the operator allows only \
         names starting with CARGO_PKG_"
    );
    let answer = api
        .post("/model/new", model_entry("os.environ/HOME", json!({})))
        .await;
    assert_eq!(
        answer.1["error"]["message"],
        "model_name: os.environ/ references are resolved only in the config file; through the \
         management API only credential fields (litellm_params.api_key) may name an environment \
         variable"
    );
    // Nothing was stored by the refused requests.
    assert_eq!(
        api.ok_get("/model/info", &[]).await["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // An allowed name in a credential field is read; its value is never returned.
    let created = api
        .ok(
            "/model/new",
            json!({"model_name": "env-keyed", "model_info": {"id": "env-1"},
                   "litellm_params": {"model": "openai/x", "api_key": "os.environ/CARGO_PKG_NAME"}}),
        )
        .await;
    assert!(
        created["litellm_params"].get("api_key").is_none(),
        "{created}"
    );
    assert!(!created.to_string().contains("os.environ"), "{created}");
    let key_of = |snapshot: &Snapshot, id: &str| {
        snapshot
            .deployments
            .iter()
            .find(|d| d.id == id)
            .map(|d| d.api_key.clone())
    };
    assert_eq!(
        key_of(&*settled(&plane).await, "env-1"),
        Some(package.clone())
    );
    assert_error(
        &api.post(
            "/model/new",
            model_entry(
                "m",
                json!({"api_key": "os.environ/CARGO_PKG_NO_SUCH_VARIABLE"}),
            ),
        )
        .await,
        400,
        Some("litellm_params.api_key"),
    );

    // Updates follow the same rule; a refused update leaves the row as it was.
    assert_error(
        &api.post(
            "/model/update",
            json!({"model_info": {"id": "env-1"}, "model_name": "os.environ/HOME"}),
        )
        .await,
        400,
        Some("model_name"),
    );
    assert_error(
        &api.post(
            "/model/update",
            json!({"model_info": {"id": "env-1"}, "litellm_params": {"api_base": "os.environ/CARGO_PKG_NAME"}}),
        )
        .await,
        400,
        Some("litellm_params.api_base"),
    );
    let updated = api
        .ok(
            "/model/update",
            json!({"model_info": {"id": "env-1"}, "litellm_params": {"api_key": "os.environ/CARGO_PKG_VERSION"}}),
        )
        .await;
    assert_eq!(updated["model_name"], "env-keyed");
    assert_eq!(key_of(&*settled(&plane).await, "env-1"), Some(version));

    // gRPC: the same rules.
    let mut grpc = plane.grpc_client().await;
    for (name, api_key) in [("os.environ/HOME", ""), ("g", "os.environ/PATH")] {
        let mut request = Request::new(pb::CreateModelRequest {
            model_name: name.into(),
            model: "openai/x".into(),
            api_key: api_key.into(),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {MASTER}").parse().unwrap());
        let status = grpc.create_model(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("os.environ/"), "{status:?}");
    }

    // Answers and error bodies carry no provider key, nor does the database.
    let answer = api
        .post(
            "/model/new",
            model_entry(
                "leak",
                json!({"model": "gpt-4o", "api_key": "sk-leak-check-secret"}),
            ),
        )
        .await;
    assert_error(&answer, 400, Some("litellm_params.model"));
    assert!(
        !answer.1.to_string().contains("sk-leak-check"),
        "{}",
        answer.1
    );
    api.ok(
        "/model/new",
        model_entry("stored", json!({"api_key": "sk-stored-provider-secret"})),
    )
    .await;
    let info = api.ok_get("/model/info", &[]).await.to_string();
    for secret in [
        "sk-upstream-config",
        "sk-stored-provider-secret",
        package.as_str(),
    ] {
        assert!(!info.contains(secret), "{secret} in /model/info: {info}");
    }
    let dump = db.dump().await;
    for secret in ["sk-upstream-config", "sk-stored-provider-secret"] {
        assert!(!dump.contains(secret), "{secret} stored in clear");
    }
    plane.stop().await;

    // The default allows no variable at all.
    let plane = Plane::start(db.url(), CONFIG).await;
    let answer = plane
        .api()
        .post(
            "/model/new",
            model_entry("m", json!({"api_key": "os.environ/CARGO_PKG_NAME"})),
        )
        .await;
    assert_error(&answer, 400, Some("litellm_params.api_key"));
    assert!(
        answer.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the operator allows no environment variables"),
        "{}",
        answer.1
    );
    plane.stop().await;
}
on_both!(
    api_env_references,
    sqlite_api_env_references,
    postgres_api_env_references
);

/// A Bedrock deployment through the management API: its AWS credentials are stored sealed,
/// pushed to the filters, kept across an update that does not name them, replaced by one that
/// does, and never shown by `/model/new`, `/model/update` or `/model/info`.
async fn bedrock_credentials_through_the_api(db: Db) {
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const TOKEN: &str = "FwoGZXIvYXdzEXAMPLE-session-token";
    let plane = Plane::start(db.url(), CONFIG).await;
    let api = plane.api();
    let created = api
        .ok(
            "/model/new",
            json!({"model_name": "claude-bedrock", "model_info": {"id": "bedrock-1"},
                   "litellm_params": {"model": "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0",
                       "aws_region_name": "eu-central-1", "aws_access_key_id": "ASIAEXAMPLE",
                       "aws_secret_access_key": SECRET, "aws_session_token": TOKEN}}),
        )
        .await;
    assert_eq!(
        created["litellm_params"]["api_base"],
        "https://bedrock-runtime.eu-central-1.amazonaws.com"
    );
    assert_eq!(created["litellm_params"]["aws_region_name"], "eu-central-1");
    let settings_of = |snapshot: &Snapshot| {
        let deployment = snapshot
            .deployments
            .iter()
            .find(|d| d.id == "bedrock-1")
            .unwrap()
            .clone();
        assert_eq!(deployment.provider, pb::ProviderKind::Bedrock as i32);
        match deployment.provider_settings {
            Some(pb::deployment::ProviderSettings::Bedrock(bedrock)) => bedrock,
            other => panic!("not Bedrock settings: {other:?}"),
        }
    };
    let pushed = settings_of(&*settled(&plane).await);
    assert_eq!(pushed.region, "eu-central-1");
    let credentials = pushed.credentials.unwrap();
    assert_eq!(
        (
            credentials.access_key_id.as_str(),
            credentials.secret_access_key.as_str(),
            credentials.session_token.as_str()
        ),
        ("ASIAEXAMPLE", SECRET, TOKEN)
    );

    // An update that names no credential keeps them.
    let updated = api
        .ok(
            "/model/update",
            json!({"model_info": {"id": "bedrock-1"}, "litellm_params": {"rpm": 10}}),
        )
        .await;
    assert_eq!(updated["model_name"], "claude-bedrock");
    let kept = settings_of(&*settled(&plane).await);
    assert_eq!(
        kept,
        pb::BedrockSettings {
            region: "eu-central-1".into(),
            credentials: Some(credentials.clone())
        }
    );
    // One that names new ones replaces them (a long-term key: no token).
    api.ok(
        "/model/update",
        json!({"model_info": {"id": "bedrock-1"}, "litellm_params": {
            "aws_access_key_id": "AKIDEXAMPLE", "aws_secret_access_key": "second-secret"}}),
    )
    .await;
    let replaced = settings_of(&*settled(&plane).await).credentials.unwrap();
    assert_eq!(
        (
            replaced.access_key_id.as_str(),
            replaced.secret_access_key.as_str(),
            replaced.session_token.as_str()
        ),
        ("AKIDEXAMPLE", "second-secret", "")
    );

    for shown in [
        created.to_string(),
        updated.to_string(),
        api.ok_get("/model/info", &[]).await.to_string(),
        api.ok_get("/model/info", &[("litellm_model_id", "bedrock-1")])
            .await
            .to_string(),
    ] {
        for secret in [SECRET, TOKEN, "second-secret"] {
            assert!(!shown.contains(secret), "{secret} shown: {shown}");
        }
    }
    let dump = db.dump().await;
    for secret in [SECRET, TOKEN, "second-secret"] {
        assert!(!dump.contains(secret), "{secret} stored in clear");
    }
    plane.stop().await;
}
on_both!(
    bedrock_credentials_through_the_api,
    sqlite_bedrock_credentials_through_the_api,
    postgres_bedrock_credentials_through_the_api
);

async fn without_a_credential_key_no_provider_key_is_stored(db: Db) {
    let config = "general_settings:\n  master_key: sk-test-master\n";
    let plane = Plane::start_with(db.url(), &load(config), None).await;
    let api = plane.api();
    let answer = api
        .post(
            "/model/new",
            model_entry("keyed", json!({"api_key": "sk-needs-a-key"})),
        )
        .await;
    assert_error(&answer, 500, None);
    assert_eq!(
        answer.1["error"]["message"].as_str().unwrap(),
        format!(
            "deployment {:?} has a provider key, and provider keys are stored encrypted: set \
             LITELLM_SALT_KEY (or TOLLGATE_SALT_KEY) to a secret of your own for the control plane",
            answer.1["error"]["message"]
                .as_str()
                .unwrap()
                .split('"')
                .nth(1)
                .unwrap()
        )
    );
    assert!(!answer.1.to_string().contains("sk-needs-a-key"));
    // Models without a key still work.
    api.ok("/model/new", model_entry("keyless", json!({})))
        .await;
    assert_eq!(
        api.ok_get("/model/info", &[]).await["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    plane.stop().await;
}
on_both!(
    without_a_credential_key_no_provider_key_is_stored,
    sqlite_without_a_credential_key_no_provider_key_is_stored,
    postgres_without_a_credential_key_no_provider_key_is_stored
);

// ---------------------------------------------------------------------------------------
// Models: config and API side by side, restarts.

async fn models_side_by_side(db: Db) {
    let plane = Plane::start(db.url(), CONFIG).await;
    let api = plane.api();
    let created = api
        .ok(
            "/model/new",
            json!({"model_name": "mini", "litellm_params": {"model": "openai/gpt-4o-mini",
                   "api_key": "sk-provider-secret", "api_base": "http://127.0.0.1:8000/v1"},
                   "model_info": {"id": "mini-1", "team": "x"}}),
        )
        .await;
    assert_eq!(created["model_id"], "mini-1");
    assert_eq!(created["model_name"], "mini");
    assert_eq!(created["litellm_params"]["model"], "openai/gpt-4o-mini");
    assert_eq!(
        created["litellm_params"]["api_base"],
        "http://127.0.0.1:8000/v1"
    );
    assert!(
        created["litellm_params"].get("api_key").is_none(),
        "{created}"
    );
    assert_eq!(created["model_info"]["db_model"], true);
    assert_eq!(created["model_info"]["team"], "x");
    // Generated id.
    let generated = api
        .ok(
            "/model/new",
            json!({"model_name": "auto", "litellm_params": {"model": "anthropic/claude-haiku"}}),
        )
        .await;
    let generated_id = generated["model_id"].as_str().unwrap().to_string();
    assert_eq!(
        generated["litellm_params"]["api_base"],
        "https://api.anthropic.com"
    );

    let info = api.ok_get("/model/info", &[]).await;
    let names: Vec<(&str, bool)> = info["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["model_name"].as_str().unwrap(),
                m["model_info"]["db_model"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("gpt", false),
            ("claude", false),
            ("mini", true),
            ("auto", true)
        ]
    );
    let config_id = info["data"][0]["model_info"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let one = api
        .ok_get("/model/info", &[("litellm_model_id", "mini-1")])
        .await;
    assert_eq!(one["data"][0]["model_name"], "mini");

    // Config models are read-only through the API.
    assert_error(
        &api.post("/model/delete", json!({"id": config_id})).await,
        400,
        Some("id"),
    );
    assert_error(
        &api.post(
            "/model/update",
            json!({"model_info": {"id": config_id}, "model_name": "x"}),
        )
        .await,
        400,
        Some("id"),
    );

    // Update: partial, the provider key kept.
    let updated = api
        .ok(
            "/model/update",
            json!({"model_info": {"id": "mini-1"}, "model_name": "mini2",
                                    "litellm_params": {"api_version": "v9"}}),
        )
        .await;
    assert_eq!(updated["model_name"], "mini2");
    assert_eq!(updated["litellm_params"]["api_version"], "v9");
    assert_eq!(
        updated["litellm_params"]["api_base"],
        "http://127.0.0.1:8000/v1"
    );
    let snapshot = settled(&plane).await;
    let mini = snapshot
        .deployments
        .iter()
        .find(|d| d.id == "mini-1")
        .unwrap();
    assert_eq!(mini.model_name, "mini2");
    assert_eq!(mini.api_key, "sk-provider-secret");
    assert_eq!(mini.api_version, "v9");
    // PATCH /model/{id}/update, and a bad update leaves the row as it was.
    let client = reqwest::Client::new();
    let patched: Value = client
        .patch(format!("http://{}/model/mini-1/update", plane.http))
        .bearer_auth(MASTER)
        .json(&json!({"litellm_params": {"max_tokens": 77}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(patched["litellm_params"]["max_tokens"], 77, "{patched}");
    assert_error(
        &api.post(
            "/model/update",
            json!({"model_info": {"id": "mini-1"}, "litellm_params": {"model": "nope"}}),
        )
        .await,
        400,
        Some("litellm_params.model"),
    );
    let delete = api.ok("/model/delete", json!({"id": generated_id})).await;
    assert_eq!(
        delete["message"],
        format!("Model: {generated_id} deleted successfully")
    );

    // A key, then a restart: config reloaded, API rows and keys kept.
    let key = api
        .ok("/key/generate", json!({"key_alias": "survivor"}))
        .await;
    let version_before = settled(&plane).await.version;
    plane.stop().await;
    let plane = Plane::start(db.url(), CONFIG).await;
    let api = plane.api();
    let info = api.ok_get("/model/info", &[]).await;
    let names: Vec<&str> = info["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gpt", "claude", "mini2"]);
    let kept = api
        .ok_get("/key/info", &[("key", key["key"].as_str().unwrap())])
        .await;
    assert_eq!(kept["info"]["key_alias"], "survivor");
    let snapshot = settled(&plane).await;
    assert!(snapshot.version > version_before);
    assert!(key_in(&snapshot, key["token"].as_str().unwrap()).is_some());
    assert_eq!(snapshot.deployments.len(), 3);
    // The provider key is stored (the filter needs it) but never answered.
    assert!(!serde_json::to_string(&info)
        .unwrap()
        .contains("sk-provider-secret"));
    plane.stop().await;
}
on_both!(
    models_side_by_side,
    sqlite_models_side_by_side,
    postgres_models_side_by_side
);

/// `/model/new` and `/model/update` take the routing fields of `litellm_params` as a config
/// file does, show them back and send them to the filters.
async fn model_routing_fields(db: Db) {
    let plane = Plane::start(db.url(), CONFIG).await;
    let api = plane.api();
    let created = api
        .ok(
            "/model/new",
            json!({"model_name": "routed", "litellm_params": {"model": "openai/gpt-4o-mini",
                   "weight": 2, "order": 1, "tags": ["eu"], "timeout": 1.5,
                   "stream_timeout": 30, "num_retries": 4},
                   "model_info": {"id": "routed-1"}}),
        )
        .await;
    let params = &created["litellm_params"];
    assert_eq!(
        (
            &params["weight"],
            &params["order"],
            &params["tags"],
            &params["timeout"],
            &params["stream_timeout"],
            &params["num_retries"]
        ),
        (
            &json!(2.0),
            &json!(1),
            &json!(["eu"]),
            &json!(1.5),
            &json!(30.0),
            &json!(4)
        ),
        "{created}"
    );
    let snapshot = settled(&plane).await;
    let routed = snapshot
        .deployments
        .iter()
        .find(|d| d.id == "routed-1")
        .unwrap();
    assert_eq!(
        (
            routed.weight,
            routed.order,
            routed.tags.clone(),
            routed.timeout_ms,
            routed.stream_timeout_ms,
            routed.num_retries
        ),
        (2.0, 1, vec!["eu".to_string()], 1500, 30_000, Some(4))
    );

    // max_retries replaces the stored num_retries (one setting), the rest is kept.
    let updated = api
        .ok(
            "/model/update",
            json!({"model_info": {"id": "routed-1"}, "litellm_params": {"max_retries": 1}}),
        )
        .await;
    assert_eq!(updated["litellm_params"]["num_retries"], 1, "{updated}");
    assert_eq!(updated["litellm_params"]["weight"], 2.0, "{updated}");
    let snapshot = settled(&plane).await;
    let routed = snapshot
        .deployments
        .iter()
        .find(|d| d.id == "routed-1")
        .unwrap();
    assert_eq!(routed.num_retries, Some(1));
    assert_eq!(routed.timeout_ms, 1500);

    // Bad values are refused with the field's path.
    assert_error(
        &api.post(
            "/model/update",
            json!({"model_info": {"id": "routed-1"}, "litellm_params": {"timeout": 0}}),
        )
        .await,
        400,
        Some("litellm_params.timeout"),
    );
    assert_error(
        &api.post(
            "/model/new",
            json!({"model_name": "bad", "litellm_params": {"model": "openai/gpt-4o-mini",
                   "weight": -1}}),
        )
        .await,
        400,
        Some("litellm_params.weight"),
    );
    plane.stop().await;
}
on_both!(
    model_routing_fields,
    sqlite_model_routing_fields,
    postgres_model_routing_fields
);

// ---------------------------------------------------------------------------------------
// gRPC.

fn authed<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

async fn grpc_api(db: Db) {
    let plane = Plane::start(db.url(), CONFIG).await;
    let mut client = plane.grpc_client().await;

    // Auth.
    let status = client
        .list_models(Request::new(pb::ListModelsRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = client
        .list_models(authed(pb::ListModelsRequest {}, "sk-wrong"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // Models.
    let models = client
        .list_models(authed(pb::ListModelsRequest {}, MASTER))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(models.models.len(), 2);
    assert_eq!(models.models[0].source, "config");
    assert!(models.models[0].has_api_key);
    let created = client
        .create_model(authed(
            pb::CreateModelRequest {
                model_name: "g-mini".into(),
                model: "openai/gpt-4o-mini".into(),
                api_key: "sk-p".into(),
                id: "g-1".into(),
                max_tokens: Some(100),
                ..Default::default()
            },
            MASTER,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.id, "g-1");
    assert_eq!(created.source, "api");
    assert_eq!(created.max_tokens, 100);
    assert_eq!(created.api_base, "https://api.openai.com/v1");
    let status = client
        .create_model(authed(
            pb::CreateModelRequest {
                model_name: "x".into(),
                model: "gpt".into(),
                ..Default::default()
            },
            MASTER,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("litellm_params.model"),
        "{status:?}"
    );
    let status = client
        .create_model(authed(
            pb::CreateModelRequest {
                model_name: "x".into(),
                model: "openai/x".into(),
                id: "g-1".into(),
                ..Default::default()
            },
            MASTER,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    let fetched = client
        .get_model(authed(pb::GetModelRequest { id: "g-1".into() }, MASTER))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.model_name, "g-mini");
    let updated = client
        .update_model(authed(
            pb::UpdateModelRequest {
                id: "g-1".into(),
                model_name: Some("g-mini-2".into()),
                ..Default::default()
            },
            MASTER,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.model_name, "g-mini-2");
    assert_eq!(updated.max_tokens, 100);
    let config_id = models.models[0].id.clone();
    let status = client
        .delete_model(authed(pb::DeleteModelRequest { id: config_id }, MASTER))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    client
        .delete_model(authed(pb::DeleteModelRequest { id: "g-1".into() }, MASTER))
        .await
        .unwrap();
    let status = client
        .get_model(authed(pb::GetModelRequest { id: "g-1".into() }, MASTER))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // Users and admin keys.
    let admin = client
        .create_user(authed(
            pb::CreateUserRequest {
                user_id: "ops".into(),
                user_role: "proxy_admin".into(),
                ..Default::default()
            },
            MASTER,
        ))
        .await
        .unwrap()
        .into_inner();
    let admin_key = admin.key.unwrap().key;
    let user = client
        .create_user(authed(
            pb::CreateUserRequest {
                user_id: "dev".into(),
                ..Default::default()
            },
            &admin_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(user.user.unwrap().user_role, "internal_user");
    let dev_key = user.key.unwrap().key;
    let status = client
        .list_keys(authed(pb::ListKeysRequest::default(), &dev_key))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = client
        .create_user(authed(
            pb::CreateUserRequest {
                user_id: "dev".into(),
                ..Default::default()
            },
            MASTER,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    let status = client
        .create_user(authed(
            pb::CreateUserRequest {
                user_role: "king".into(),
                ..Default::default()
            },
            MASTER,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let info = client
        .get_user(authed(
            pb::GetUserRequest {
                user_id: "dev".into(),
            },
            MASTER,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.keys.len(), 1);

    // Teams.
    let team = client
        .create_team(authed(
            pb::CreateTeamRequest {
                team_id: "core".into(),
                team_alias: "Core".into(),
                members: vec![pb::TeamMember {
                    user_id: "dev".into(),
                    role: "admin".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            MASTER,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(team.members.len(), 1);
    let team = client
        .add_team_member(authed(
            pb::AddTeamMemberRequest {
                team_id: "core".into(),
                members: vec![pb::TeamMember {
                    user_id: "ops".into(),
                    ..Default::default()
                }],
            },
            MASTER,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(team.members.len(), 2);
    assert_eq!(team.members[1].role, "user");
    let status = client
        .get_team(authed(
            pb::GetTeamRequest {
                team_id: "zzz".into(),
            },
            MASTER,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // Keys.
    let generated = client
        .generate_key(authed(
            pb::GenerateKeyRequest {
                key_alias: "g".into(),
                team_id: "core".into(),
                models: vec!["gpt".into()],
                duration: "2d".into(),
                metadata_json: r#"{"a":1}"#.into(),
                ..Default::default()
            },
            MASTER,
        ))
        .await
        .unwrap()
        .into_inner();
    let key = generated.key.clone();
    let info = generated.info.unwrap();
    assert_eq!(info.token, sha256_hex(&key));
    assert!(info.expires_unix_ms > 0);
    let status = client
        .generate_key(authed(
            pb::GenerateKeyRequest {
                metadata_json: "{".into(),
                ..Default::default()
            },
            MASTER,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("metadata_json"));
    let status = client
        .generate_key(authed(
            pb::GenerateKeyRequest {
                key_alias: "g".into(),
                ..Default::default()
            },
            MASTER,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    let listed = client
        .list_keys(authed(
            pb::ListKeysRequest {
                team_id: "core".into(),
                ..Default::default()
            },
            MASTER,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total_count, 1);
    let got = client
        .get_key(authed(pb::KeyRef { key: key.clone() }, MASTER))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.key_alias, "g");
    let updated = client
        .update_key(authed(
            pb::UpdateKeyRequest {
                key: key.clone(),
                models: Some(pb::StringList { values: vec![] }),
                duration: Some(String::new()),
                key_alias: Some(String::new()),
                ..Default::default()
            },
            MASTER,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(updated.models.is_empty());
    assert_eq!(updated.expires_unix_ms, 0);
    assert_eq!(updated.key_alias, "");
    assert_eq!(updated.metadata_json, r#"{"a":1}"#);
    let blocked = client
        .block_key(authed(pb::KeyRef { key: key.clone() }, MASTER))
        .await
        .unwrap()
        .into_inner();
    assert!(blocked.blocked);
    let unblocked = client
        .unblock_key(authed(
            pb::KeyRef {
                key: info.token.clone(),
            },
            MASTER,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!unblocked.blocked);
    let regenerated = client
        .regenerate_key(authed(
            pb::RegenerateKeyRequest {
                key: key.clone(),
                new_key: String::new(),
            },
            MASTER,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(regenerated.key, key);
    let status = client
        .get_key(authed(pb::KeyRef { key: key.clone() }, MASTER))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .delete_keys(authed(
            pb::DeleteKeysRequest {
                keys: vec![regenerated.key.clone(), key.clone()],
                key_aliases: vec![],
            },
            MASTER,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let deleted = client
        .delete_keys(authed(
            pb::DeleteKeysRequest {
                keys: vec![regenerated.key.clone()],
                key_aliases: vec![],
            },
            MASTER,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted_keys, [sha256_hex(&regenerated.key)]);
    let team = client
        .get_team(authed(
            pb::GetTeamRequest {
                team_id: "core".into(),
            },
            MASTER,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(team.keys.is_empty());

    plane.stop().await;
}
on_both!(grpc_api, sqlite_grpc_api, postgres_grpc_api);

#[tokio::test]
async fn grpc_reflection_lists_the_management_service() {
    use tonic_reflection_probe::list_services;
    let db = Db::new(false).await;
    let plane = Plane::start(db.url(), CONFIG).await;
    let services = list_services(plane.grpc).await;
    assert!(
        services.contains(&"tollgate.v1.Management".to_string()),
        "{services:?}"
    );
    assert!(
        services.contains(&"tollgate.v1.FilterSync".to_string()),
        "{services:?}"
    );
    plane.stop().await;
}

/// Minimal reflection client (the v1 protocol's ListServices).
mod tonic_reflection_probe {
    use std::net::SocketAddr;

    pub async fn list_services(address: SocketAddr) -> Vec<String> {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
        let response = stream.message().await.unwrap().unwrap();
        match response.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Live push to connected filters.

async fn live_push(db: Db) {
    let plane = Plane::start(db.url(), CONFIG).await;
    let api = plane.api();
    let mut filters = vec![
        common::FakeFilter::connect(plane.grpc).await,
        common::FakeFilter::connect(plane.grpc).await,
    ];
    for filter in &mut filters {
        let first = filter.next_snapshot().await;
        assert!(first.keys.is_empty());
    }

    let started = Instant::now();
    let created = api
        .ok(
            "/key/generate",
            json!({"key_alias": "live", "models": ["gpt"], "duration": "1d"}),
        )
        .await;
    let token = created["token"].as_str().unwrap().to_string();
    for filter in &mut filters {
        let snapshot = filter.snapshot_where(|s| key_in(s, &token).is_some()).await;
        let key = key_in(&snapshot, &token).unwrap();
        assert_eq!(key.key_alias, "live");
        assert_eq!(key.models, ["gpt"]);
        assert!(!key.blocked);
        assert!(key.expires_unix_ms > tollgate::store::now_unix_ms());
    }
    println!(
        "propagation ({}): key generate -> snapshot on 2 streams in {:?}",
        backend(&db),
        started.elapsed()
    );

    let started = Instant::now();
    api.ok("/key/block", json!({"key": created["key"]})).await;
    for filter in &mut filters {
        filter
            .snapshot_where(|s| key_in(s, &token).is_some_and(|k| k.blocked))
            .await;
    }
    println!(
        "propagation ({}): key block -> blocked in snapshot in {:?}",
        backend(&db),
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    let started = Instant::now();
    api.ok(
        "/model/new",
        json!({"model_name": "pushed", "litellm_params": {"model": "openai/x", "api_base": "http://127.0.0.1:1"}}),
    )
    .await;
    for filter in &mut filters {
        filter
            .snapshot_where(|s| s.deployments.iter().any(|d| d.model_name == "pushed"))
            .await;
    }
    println!(
        "propagation ({}): model new -> snapshot in {:?}",
        backend(&db),
        started.elapsed()
    );

    let started = Instant::now();
    api.ok("/key/delete", json!({"keys": [token]})).await;
    for filter in &mut filters {
        filter.snapshot_where(|s| key_in(s, &token).is_none()).await;
    }
    println!(
        "propagation ({}): key delete -> gone from snapshot in {:?}",
        backend(&db),
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    // Versions are the database's.
    assert_eq!(
        settled(&plane).await.version,
        plane.store.stored_version().await.unwrap()
    );
    plane.stop().await;
}
on_both!(live_push, sqlite_live_push, postgres_live_push);

fn backend(db: &Db) -> &'static str {
    match db {
        Db::Sqlite(..) => "sqlite",
        Db::Postgres(_) => "postgres",
    }
}

// ---------------------------------------------------------------------------------------
// Two replicas on one PostgreSQL database.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_two_replicas_share_changes() {
    let db = Db::new(true).await;
    let a = Plane::start(db.url(), CONFIG).await;
    let b = Plane::start(db.url(), CONFIG).await;
    let mut on_b = common::FakeFilter::connect(b.grpc).await;
    let mut on_a = common::FakeFilter::connect(a.grpc).await;
    on_b.next_snapshot().await;
    on_a.next_snapshot().await;

    let started = Instant::now();
    let created = a
        .api()
        .ok("/key/generate", json!({"key_alias": "replicated"}))
        .await;
    let token = created["token"].as_str().unwrap().to_string();
    let snapshot_b = on_b.snapshot_where(|s| key_in(s, &token).is_some()).await;
    let elapsed = started.elapsed();
    println!("propagation (postgres, replica A -> stream on replica B): {elapsed:?}");
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    let snapshot_a = on_a.snapshot_where(|s| key_in(s, &token).is_some()).await;
    assert_eq!(
        snapshot_a.version, snapshot_b.version,
        "replicas disagree on the version"
    );
    assert_eq!(snapshot_a, snapshot_b);

    // And the other way round, with a block.
    let started = Instant::now();
    b.api().ok("/key/block", json!({"key": token})).await;
    on_a.snapshot_where(|s| key_in(s, &token).is_some_and(|k| k.blocked))
        .await;
    println!(
        "propagation (postgres, replica B block -> stream on replica A): {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    // A key created on B authenticates on A's API right away (shared database).
    let admin = b
        .api()
        .ok(
            "/user/new",
            json!({"user_id": "admin", "user_role": "proxy_admin"}),
        )
        .await;
    a.api()
        .with_key(admin["key"].as_str())
        .ok_get("/key/list", &[])
        .await;

    a.stop().await;
    b.stop().await;
}

/// The safety-net poll alone (no notification) brings a replica up to date.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_version_poll_catches_changes_from_another_process() {
    let db = Db::new(false).await;
    let plane = Plane::start(db.url(), CONFIG).await;
    let mut filter = common::FakeFilter::connect(plane.grpc).await;
    filter.next_snapshot().await;
    // A second store on the same file stands for another process writing.
    let other = common::connect(db.url()).await;
    let hub = SyncHub::start(other.clone()).await.unwrap();
    let manager = Manager::new(hub);
    let (clear, row) = manager
        .generate_key(tollgate::manage::KeyGenerate::default())
        .await
        .unwrap();
    assert_eq!(row.token, sha256_hex(&clear));
    let started = Instant::now();
    filter
        .snapshot_where(|s| key_in(s, &row.token).is_some())
        .await;
    assert!(started.elapsed() < sync::VERSION_POLL_INTERVAL + Duration::from_secs(2));
    other.close().await;
    plane.stop().await;
}

// ---------------------------------------------------------------------------------------
// The CLI against a running API.

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env_remove("TOLLGATE_MASTER_KEY")
        .env_remove("TOLLGATE_URL")
        .output()
        .unwrap()
}

async fn cli_commands(db: Db) {
    let plane = Plane::start(db.url(), CONFIG).await;
    let url = format!("http://{}", plane.http);
    tokio::task::spawn_blocking(move || cli_session(&url))
        .await
        .unwrap();
    plane.stop().await;
}

fn cli_session(url: &str) {
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&["--url", url, "--master-key", MASTER]);
        let output = cli(&all);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), stdout, stderr)
    };
    let json_of = |(code, stdout, stderr): (Option<i32>, String, String)| -> Value {
        assert_eq!(code, Some(0), "{stdout}{stderr}");
        serde_json::from_str(&stdout).unwrap()
    };
    let model = json_of(run(&[
        "models",
        "add",
        "--model-name",
        "cli-m",
        "--model",
        "openai/x",
        "--id",
        "cli-1",
    ]));
    assert_eq!(model["model_id"], "cli-1");
    // The CLI goes through the API, which reads no environment variable for a model name or
    // for a key the operator did not allow.
    for (flag, value) in [
        ("--model-name", "os.environ/HOME"),
        ("--api-key", "os.environ/PATH"),
    ] {
        let mut args = vec!["models", "add", "--model", "openai/x"];
        if flag != "--model-name" {
            args.extend_from_slice(&["--model-name", "cli-env"]);
        }
        args.extend_from_slice(&[flag, value]);
        let (code, stdout, stderr) = run(&args);
        assert_eq!(code, Some(1), "{stdout}{stderr}");
        assert!(stderr.contains("os.environ/"), "{stderr}");
        assert!(
            !stderr.contains("/root") && !stderr.contains("/usr/bin"),
            "{stderr}"
        );
    }
    let list = json_of(run(&["models", "list"]));
    assert_eq!(list["data"].as_array().unwrap().len(), 3);
    let team = json_of(run(&[
        "teams",
        "create",
        "--team-id",
        "ct",
        "--alias",
        "cli-team",
        "--member",
        "m1:admin",
    ]));
    assert_eq!(team["members_with_roles"][0]["role"], "admin");
    let team = json_of(run(&["teams", "add-member", "ct", "--user-id", "m2"]));
    assert_eq!(team["members_with_roles"].as_array().unwrap().len(), 2);
    json_of(run(&["teams", "info", "ct"]));
    let user = json_of(run(&[
        "users",
        "create",
        "--user-id",
        "cu",
        "--user-role",
        "internal_user",
    ]));
    assert!(user["key"].as_str().unwrap().starts_with("sk-"));
    json_of(run(&["users", "info", "cu"]));
    let key = json_of(run(&[
        "keys",
        "generate",
        "--alias",
        "cli-key",
        "--models",
        "gpt,cli-m",
        "--team-id",
        "ct",
    ]));
    assert_eq!(key["models"], json!(["gpt", "cli-m"]));
    let clear = key["key"].as_str().unwrap().to_string();
    let listed = json_of(run(&["keys", "list", "--team-id", "ct"]));
    assert_eq!(listed["total_count"], 1);
    json_of(run(&["keys", "info", &clear]));
    let updated = json_of(run(&[
        "keys",
        "update",
        &clear,
        "--alias",
        "cli-key-2",
        "--blocked",
        "true",
    ]));
    assert_eq!(updated["blocked"], true);
    assert_eq!(json_of(run(&["keys", "unblock", &clear]))["blocked"], false);
    assert_eq!(json_of(run(&["keys", "block", &clear]))["blocked"], true);
    let regenerated = json_of(run(&["keys", "regenerate", &clear]));
    let new_clear = regenerated["key"].as_str().unwrap().to_string();
    json_of(run(&["keys", "delete", &new_clear]));
    json_of(run(&["models", "delete", "cli-1"]));

    // Failures: non-zero exit and the API's message.
    let (code, _, stderr) = run(&["keys", "info", "sk-missing-key"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("404") && stderr.contains("key not found"),
        "{stderr}"
    );
    let (code, _, stderr) = run(&["models", "add", "--model-name", "x", "--model", "bad"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("litellm_params.model"), "{stderr}");
    let output = cli(&["keys", "list", "--url", url]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("401"));
}

on_both!(cli_commands, sqlite_cli_commands, postgres_cli_commands);

// ---------------------------------------------------------------------------------------
// Concurrency and listener recovery.

/// Many changes at once (on two replicas for PostgreSQL): every one is committed with its
/// own version and every replica ends on the same snapshot.
async fn concurrent_changes(db: Db) {
    let postgres = matches!(db, Db::Postgres(_));
    let a = Plane::start(db.url(), CONFIG).await;
    let b = if postgres {
        Some(Plane::start(db.url(), CONFIG).await)
    } else {
        None
    };
    let mut tasks = Vec::new();
    for index in 0..24 {
        let api = match (&b, index % 2) {
            (Some(b), 1) => b.api(),
            _ => a.api(),
        };
        tasks.push(tokio::spawn(async move {
            api.ok("/key/generate", json!({"key_alias": format!("c{index}")}))
                .await["token"]
                .as_str()
                .unwrap()
                .to_string()
        }));
    }
    let mut tokens = Vec::new();
    for task in tasks {
        tokens.push(task.await.unwrap());
    }
    let stored = a.store.stored_version().await.unwrap();
    let planes: Vec<&Plane> = std::iter::once(&a).chain(b.as_ref()).collect();
    for plane in &planes {
        let deadline = Instant::now() + WAIT;
        while plane.hub.current_version() < stored {
            assert!(Instant::now() < deadline, "replica did not catch up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let snapshot = settled(plane).await;
        assert_eq!(snapshot.version, stored);
        for token in &tokens {
            assert!(key_in(&snapshot, token).is_some());
        }
    }
    if let Some(b) = &b {
        assert_eq!(*a.hub.current(), *b.hub.current());
    }
    a.stop().await;
    if let Some(b) = b {
        b.stop().await;
    }
}
on_both!(
    concurrent_changes,
    sqlite_concurrent_changes,
    postgres_concurrent_changes
);

/// The LISTEN connection dies (killed by the server): the replica reconnects, and a change
/// made meanwhile still reaches its filters.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_listener_reconnects() {
    use sqlx::{Connection, Row};
    let db = Db::new(true).await;
    let a = Plane::start(db.url(), CONFIG).await;
    let b = Plane::start(db.url(), CONFIG).await;
    let mut on_b = common::FakeFilter::connect(b.grpc).await;
    on_b.next_snapshot().await;

    let mut admin = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let killed = sqlx::query(
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap()
    .get::<i64, _>("n");
    assert_eq!(killed, 2, "one listener per replica");
    admin.close().await.unwrap();

    let started = Instant::now();
    let created = a
        .api()
        .ok("/key/generate", json!({"key_alias": "after-kill"}))
        .await;
    let token = created["token"].as_str().unwrap().to_string();
    on_b.snapshot_where(|s| key_in(s, &token).is_some()).await;
    println!(
        "propagation after a killed LISTEN connection: {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < sync::VERSION_POLL_INTERVAL + Duration::from_secs(1));

    // Listening again: the next change arrives by notification, well before a poll.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut check = sqlx::PgConnection::connect(db.url()).await.unwrap();
        let listening = sqlx::query(
            "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
        )
        .fetch_one(&mut check)
        .await
        .unwrap()
        .get::<i64, _>("n");
        check.close().await.unwrap();
        if listening == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "listeners did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let created = a
        .api()
        .ok("/key/generate", json!({"key_alias": "after-reconnect"}))
        .await;
    let token = created["token"].as_str().unwrap().to_string();
    on_b.snapshot_where(|s| key_in(s, &token).is_some()).await;
    println!(
        "propagation after the listener reconnected: {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    a.stop().await;
    b.stop().await;
}
