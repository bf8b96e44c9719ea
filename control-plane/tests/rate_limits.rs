//! Rate limits in the management API (HTTP and gRPC), in config.yaml and in what the
//! filters get, on SQLite and PostgreSQL: every field round-trips exactly (null when unset,
//! as LiteLLM shows it), bad values are 400s naming the field, the snapshot carries exact
//! `RateLimits`, and a change reaches a connected filter as a delta.
// Test helpers outside #[test] functions: a failure should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;

use serde_json::{json, Value};

use common::{authed, load, on_both, Db, Plane, Update, CONFIG};
use tollgate::proto::{self as pb};
use tollgate::sync::load_snapshot;

/// The rate-limit fields of a key answer, for one exact comparison.
fn key_limits_of(value: &Value) -> Value {
    json!({
        "rpm_limit": value["rpm_limit"],
        "tpm_limit": value["tpm_limit"],
        "max_parallel_requests": value["max_parallel_requests"],
        "model_rpm_limit": value["model_rpm_limit"],
        "model_tpm_limit": value["model_tpm_limit"],
    })
}

/// The rate-limit fields of a user or team answer.
fn limits_of(value: &Value) -> Value {
    json!({
        "rpm_limit": value["rpm_limit"],
        "tpm_limit": value["tpm_limit"],
        "max_parallel_requests": value["max_parallel_requests"],
    })
}

fn limits(rpm: Option<u64>, tpm: Option<u64>, parallel: Option<u64>) -> pb::RateLimits {
    pb::RateLimits {
        rpm,
        tpm,
        max_parallel_requests: parallel,
    }
}

async fn key_limits(db: Db) {
    let plane = Plane::start(db.url(), CONFIG).await;

    // Unset: every field null, as LiteLLM shows it.
    let plain = plane.ok("/key/generate", json!({})).await;
    let unset = json!({
        "rpm_limit": null,
        "tpm_limit": null,
        "max_parallel_requests": null,
        "model_rpm_limit": null,
        "model_tpm_limit": null,
    });
    assert_eq!(key_limits_of(&plain), unset);

    let created = plane
        .ok(
            "/key/generate",
            json!({
                "key_alias": "limited",
                "rpm_limit": 10,
                "tpm_limit": 1000,
                "max_parallel_requests": 2,
                "model_rpm_limit": {"gpt": 5, "claude": 7},
                "model_tpm_limit": {"gpt": 500},
            }),
        )
        .await;
    let clear = created["key"].as_str().unwrap().to_string();
    let expected = json!({
        "rpm_limit": 10,
        "tpm_limit": 1000,
        "max_parallel_requests": 2,
        "model_rpm_limit": {"gpt": 5, "claude": 7},
        "model_tpm_limit": {"gpt": 500},
    });
    assert_eq!(key_limits_of(&created), expected);
    let info = plane.get("/key/info", &[("key", &clear)]).await;
    assert_eq!(key_limits_of(&info["info"]), expected);
    let list = plane
        .get(
            "/key/list",
            &[("return_full_object", "true"), ("key_alias", "limited")],
        )
        .await;
    assert_eq!(list["keys"].as_array().unwrap().len(), 1);
    assert_eq!(key_limits_of(&list["keys"][0]), expected);

    // null clears, a value replaces, an absent field stays.
    let updated = plane
        .ok(
            "/key/update",
            json!({
                "key": clear,
                "rpm_limit": null,
                "tpm_limit": 2000,
                "model_rpm_limit": {"claude": 0},
                "model_tpm_limit": null,
            }),
        )
        .await;
    let expected = json!({
        "rpm_limit": null,
        "tpm_limit": 2000,
        "max_parallel_requests": 2,
        "model_rpm_limit": {"claude": 0},
        "model_tpm_limit": null,
    });
    assert_eq!(key_limits_of(&updated), expected);
    let info = plane.get("/key/info", &[("key", &clear)]).await;
    assert_eq!(key_limits_of(&info["info"]), expected);
    // Another update of other fields keeps them.
    let blocked = plane.ok("/key/block", json!({"key": clear})).await;
    assert_eq!(key_limits_of(&blocked), expected);
    // {} clears the model limits too.
    let updated = plane
        .ok(
            "/key/update",
            json!({"key": clear, "model_rpm_limit": {}, "max_parallel_requests": null}),
        )
        .await;
    assert_eq!(
        key_limits_of(&updated),
        json!({
            "rpm_limit": null,
            "tpm_limit": 2000,
            "max_parallel_requests": null,
            "model_rpm_limit": null,
            "model_tpm_limit": null,
        })
    );
    plane.stop().await;
}
on_both!(key_limits, key_limits_sqlite, key_limits_postgres);

async fn user_and_team_limits(db: Db) {
    let plane = Plane::start(db.url(), CONFIG).await;
    let unset = json!({"rpm_limit": null, "tpm_limit": null, "max_parallel_requests": null});

    let user = plane
        .ok(
            "/user/new",
            json!({"user_id": "u1", "rpm_limit": 30, "max_parallel_requests": 4}),
        )
        .await;
    let expected = json!({"rpm_limit": 30, "tpm_limit": null, "max_parallel_requests": 4});
    assert_eq!(limits_of(&user), expected);
    // The user's limits are not its key's.
    let token = user["token"].as_str().unwrap().to_string();
    let key = plane.get("/key/info", &[("key", &token)]).await;
    assert_eq!(limits_of(&key["info"]), unset);
    let info = plane.get("/user/info", &[("user_id", "u1")]).await;
    assert_eq!(limits_of(&info["user_info"]), expected);
    let updated = plane
        .ok(
            "/user/update",
            json!({"user_id": "u1", "rpm_limit": null, "tpm_limit": 9000}),
        )
        .await;
    let expected = json!({"rpm_limit": null, "tpm_limit": 9000, "max_parallel_requests": 4});
    assert_eq!(limits_of(&updated), expected);
    let info = plane.get("/user/info", &[("user_id", "u1")]).await;
    assert_eq!(limits_of(&info["user_info"]), expected);

    let team = plane
        .ok(
            "/team/new",
            json!({"team_id": "t1", "tpm_limit": 50000, "rpm_limit": 0}),
        )
        .await;
    let expected = json!({"rpm_limit": 0, "tpm_limit": 50000, "max_parallel_requests": null});
    assert_eq!(limits_of(&team), expected);
    let info = plane.get("/team/info", &[("team_id", "t1")]).await;
    assert_eq!(limits_of(&info["team_info"]), expected);
    let updated = plane
        .ok(
            "/team/update",
            json!({"team_id": "t1", "rpm_limit": null, "max_parallel_requests": 8}),
        )
        .await;
    let expected = json!({"rpm_limit": null, "tpm_limit": 50000, "max_parallel_requests": 8});
    assert_eq!(limits_of(&updated), expected);
    let info = plane.get("/team/info", &[("team_id", "t1")]).await;
    assert_eq!(limits_of(&info["team_info"]), expected);
    // A user in the team shows the team with its limits.
    plane
        .ok(
            "/team/member_add",
            json!({"team_id": "t1", "member": {"user_id": "u1"}}),
        )
        .await;
    let info = plane.get("/user/info", &[("user_id", "u1")]).await;
    assert_eq!(limits_of(&info["teams"][0]), expected);

    let other = plane.ok("/team/new", json!({"team_id": "t2"})).await;
    assert_eq!(limits_of(&other), unset);
    plane.stop().await;
}
on_both!(
    user_and_team_limits,
    user_and_team_limits_sqlite,
    user_and_team_limits_postgres
);

async fn bad_limits(db: Db) {
    let plane = Plane::start(db.url(), CONFIG).await;
    plane.ok("/key/generate", json!({"key_alias": "k"})).await;
    let key = plane.get("/key/list", &[("key_alias", "k")]).await["keys"][0]
        .as_str()
        .unwrap()
        .to_string();
    for (path, body, param) in [
        ("/key/generate", json!({"rpm_limit": -1}), "rpm_limit"),
        ("/key/generate", json!({"tpm_limit": 1.5}), "tpm_limit"),
        (
            "/key/generate",
            json!({"max_parallel_requests": "3"}),
            "max_parallel_requests",
        ),
        (
            "/key/generate",
            json!({"rpm_limit": 9_223_372_036_854_775_808_u64}),
            "rpm_limit",
        ),
        (
            "/key/generate",
            json!({"model_rpm_limit": {"gpt-4o": -1}}),
            "model_rpm_limit.gpt-4o",
        ),
        (
            "/key/generate",
            json!({"model_tpm_limit": {"gpt-4o": 10, "claude": "many"}}),
            "model_tpm_limit.claude",
        ),
        (
            "/key/generate",
            json!({"model_tpm_limit": [1]}),
            "model_tpm_limit",
        ),
        (
            "/key/generate",
            json!({"model_rpm_limit": {"": 1}}),
            "model_rpm_limit",
        ),
        (
            "/key/update",
            json!({"key": key, "tpm_limit": -3}),
            "tpm_limit",
        ),
        (
            "/key/update",
            json!({"key": key, "model_rpm_limit": {"gpt": 0.5}}),
            "model_rpm_limit.gpt",
        ),
        ("/user/new", json!({"rpm_limit": -1}), "rpm_limit"),
        (
            "/user/new",
            json!({"user_id": "u9", "max_parallel_requests": true}),
            "max_parallel_requests",
        ),
        (
            "/team/new",
            json!({"team_id": "t9", "tpm_limit": 2.5}),
            "tpm_limit",
        ),
        (
            "/model/new",
            json!({"model_name": "m", "litellm_params": {"model": "openai/x", "rpm": -1}}),
            "litellm_params.rpm",
        ),
        (
            "/model/new",
            json!({"model_name": "m", "litellm_params": {"model": "openai/x",
                "max_parallel_requests": 1.5}}),
            "litellm_params.max_parallel_requests",
        ),
    ] {
        plane.bad(path, body, param).await;
    }
    plane
        .ok(
            "/user/new",
            json!({"user_id": "u1", "auto_create_key": false}),
        )
        .await;
    plane.ok("/team/new", json!({"team_id": "t1"})).await;
    plane
        .bad(
            "/user/update",
            json!({"user_id": "u1", "tpm_limit": -1}),
            "tpm_limit",
        )
        .await;
    plane
        .bad(
            "/team/update",
            json!({"team_id": "t1", "rpm_limit": "10"}),
            "rpm_limit",
        )
        .await;
    // The message says what is wanted.
    let (_, answer) = plane
        .post("/key/generate", json!({"model_rpm_limit": {"gpt-4o": -1}}))
        .await;
    assert_eq!(
        answer["error"]["message"],
        "model_rpm_limit.gpt-4o: must be a whole number, 0 or more, got -1"
    );
    assert_eq!(answer["error"]["type"], "bad_request_error");
    assert_eq!(answer["error"]["code"], "400");
    // Nothing was stored by the refused requests.
    assert_eq!(plane.get("/key/list", &[]).await["total_count"], json!(1));
    plane.stop().await;
}
on_both!(bad_limits, bad_limits_sqlite, bad_limits_postgres);

async fn grpc_limits(db: Db) {
    let plane = Plane::start(db.url(), CONFIG).await;
    let mut client = plane.grpc_client().await;
    let generated = client
        .generate_key(authed(pb::GenerateKeyRequest {
            limits: Some(limits(Some(10), None, Some(3))),
            model_rpm_limit: HashMap::from([("gpt".to_string(), 4)]),
            model_tpm_limit: HashMap::from([("gpt".to_string(), 400), ("claude".to_string(), 0)]),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let info = generated.info.unwrap();
    assert_eq!(info.limits, Some(limits(Some(10), None, Some(3))));
    assert_eq!(
        info.model_rpm_limit,
        HashMap::from([("gpt".to_string(), 4)])
    );
    assert_eq!(
        info.model_tpm_limit,
        HashMap::from([("gpt".to_string(), 400), ("claude".to_string(), 0)])
    );
    // The HTTP API shows the same.
    let http = plane.get("/key/info", &[("key", &generated.key)]).await;
    assert_eq!(
        key_limits_of(&http["info"]),
        json!({
            "rpm_limit": 10,
            "tpm_limit": null,
            "max_parallel_requests": 3,
            "model_rpm_limit": {"gpt": 4},
            "model_tpm_limit": {"gpt": 400, "claude": 0},
        })
    );

    // Absent: kept; present: exactly these (a limit left out is cleared).
    let kept = client
        .update_key(authed(pb::UpdateKeyRequest {
            key: generated.key.clone(),
            blocked: Some(true),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.limits, Some(limits(Some(10), None, Some(3))));
    let updated = client
        .update_key(authed(pb::UpdateKeyRequest {
            key: generated.key.clone(),
            limits: Some(limits(None, Some(7), None)),
            model_rpm_limit: Some(pb::ModelRateLimits::default()),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.limits, Some(limits(None, Some(7), None)));
    assert!(updated.model_rpm_limit.is_empty());
    assert_eq!(updated.model_tpm_limit.len(), 2);
    let cleared = client
        .update_key(authed(pb::UpdateKeyRequest {
            key: generated.key.clone(),
            limits: Some(pb::RateLimits::default()),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cleared.limits, None);

    let too_big = client
        .generate_key(authed(pb::GenerateKeyRequest {
            model_rpm_limit: HashMap::from([("gpt".to_string(), u64::MAX)]),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(too_big.code(), tonic::Code::InvalidArgument);
    assert!(
        too_big.message().starts_with("model_rpm_limit.gpt: "),
        "{}",
        too_big.message()
    );

    let user = client
        .create_user(authed(pb::CreateUserRequest {
            user_id: "u1".into(),
            no_key: true,
            limits: Some(limits(Some(1), Some(2), Some(3))),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.limits, Some(limits(Some(1), Some(2), Some(3))));
    let user = client
        .update_user(authed(pb::UpdateUserRequest {
            user_id: "u1".into(),
            limits: Some(limits(None, Some(20), None)),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(user.limits, Some(limits(None, Some(20), None)));
    let got = client
        .get_user(authed(pb::GetUserRequest {
            user_id: "u1".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.user.unwrap().limits, Some(limits(None, Some(20), None)));

    let team = client
        .create_team(authed(pb::CreateTeamRequest {
            team_id: "t1".into(),
            limits: Some(limits(Some(100), None, None)),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(team.limits, Some(limits(Some(100), None, None)));
    let team = client
        .update_team(authed(pb::UpdateTeamRequest {
            team_id: "t1".into(),
            metadata_json: Some("{}".into()),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(team.limits, Some(limits(Some(100), None, None)));
    let team = client
        .update_team(authed(pb::UpdateTeamRequest {
            team_id: "t1".into(),
            limits: Some(limits(None, None, Some(5))),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(team.limits, Some(limits(None, None, Some(5))));
    let http = plane.get("/team/info", &[("team_id", "t1")]).await;
    assert_eq!(
        limits_of(&http["team_info"]),
        json!({"rpm_limit": null, "tpm_limit": null, "max_parallel_requests": 5})
    );

    let model = client
        .create_model(authed(pb::CreateModelRequest {
            model_name: "m".into(),
            model: "openai/gpt-4o-mini".into(),
            id: "m-1".into(),
            limits: Some(limits(Some(60), Some(6000), None)),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(model.limits, Some(limits(Some(60), Some(6000), None)));
    let model = client
        .update_model(authed(pb::UpdateModelRequest {
            id: "m-1".into(),
            model_name: Some("m2".into()),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(model.limits, Some(limits(Some(60), Some(6000), None)));
    let model = client
        .update_model(authed(pb::UpdateModelRequest {
            id: "m-1".into(),
            limits: Some(limits(None, None, Some(2))),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(model.limits, Some(limits(None, None, Some(2))));
    plane.stop().await;
}
on_both!(grpc_limits, grpc_limits_sqlite, grpc_limits_postgres);

/// The rate-limiting block of the seed config (/work/shared/seeds/000_c61eacea6ba789f1.txt),
/// with a master key and models around it.
const LIMITS_CONFIG: &str = r#"
general_settings:
  master_key: sk-test-master
  tpm_limit: 10000  # tokens per minute
  rpm_limit: 100    # requests per minute
  max_parallel_requests: 10
  global_max_parallel_requests: 50
  user_rate_limit:
    "user-1": {"tpm": 5000, "rpm": 50}
    "user-2": {"max_parallel_requests": 2}
model_list:
  - model_name: gpt
    litellm_params:
      model: openai/gpt-4o
      api_key: sk-upstream-config
      rpm: 600
      tpm: 90000
      max_parallel_requests: 20
    model_info:
      id: gpt-limited
  - model_name: gpt
    litellm_params:
      model: openai/gpt-4o
      api_base: https://eu.example.com/v1
    model_info:
      id: gpt-unlimited
"#;

fn settings_limits(snapshot: &pb::Snapshot) -> Vec<pb::ScopedRateLimits> {
    snapshot.settings.clone().unwrap().rate_limits
}

fn scoped(scope: pb::BudgetScope, id: &str, limits: pb::RateLimits) -> pb::ScopedRateLimits {
    pb::ScopedRateLimits {
        scope: scope as i32,
        id: id.into(),
        limits: Some(limits),
    }
}

fn key_of<'a>(snapshot: &'a pb::Snapshot, token: &str) -> &'a pb::VirtualKey {
    snapshot
        .keys
        .iter()
        .find(|key| key.key_sha256 == token)
        .unwrap()
}

async fn config_and_snapshot(db: Db) {
    let loaded = load(LIMITS_CONFIG);
    assert_eq!(loaded.warnings, []);
    let plane = Plane::start(db.url(), LIMITS_CONFIG).await;

    let own = plane
        .ok(
            "/key/generate",
            json!({
                "rpm_limit": 10,
                "tpm_limit": 1000,
                "max_parallel_requests": 1,
                "model_rpm_limit": {"gpt": 5, "claude": 7},
                "model_tpm_limit": {"gpt": 500, "mini": 50},
            }),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let defaulted = plane.ok("/key/generate", json!({"rpm_limit": 3})).await["token"]
        .as_str()
        .unwrap()
        .to_string();
    // The user's own rpm wins over user_rate_limit's; its tpm comes from there.
    plane
        .ok(
            "/user/new",
            json!({"user_id": "user-1", "rpm_limit": 5, "auto_create_key": false}),
        )
        .await;
    plane
        .ok(
            "/user/new",
            json!({"user_id": "user-3", "auto_create_key": false}),
        )
        .await;
    plane
        .ok("/team/new", json!({"team_id": "team-a", "tpm_limit": 70}))
        .await;
    plane.ok("/team/new", json!({"team_id": "team-b"})).await;
    plane
        .ok(
            "/model/new",
            json!({
                "model_name": "api-model",
                "litellm_params": {"model": "openai/gpt-4o-mini", "tpm": 123},
                "model_info": {"id": "api-1"},
            }),
        )
        .await;

    let snapshot = load_snapshot(&plane.store).await.unwrap();
    let key = key_of(&snapshot, &own);
    assert_eq!(key.limits, Some(limits(Some(10), Some(1000), Some(1))));
    assert_eq!(
        key.model_limits,
        HashMap::from([
            ("gpt".to_string(), limits(Some(5), Some(500), None)),
            ("claude".to_string(), limits(Some(7), None, None)),
            ("mini".to_string(), limits(None, Some(50), None)),
        ])
    );
    // general_settings.max_parallel_requests is the default of a key without one.
    let key = key_of(&snapshot, &defaulted);
    assert_eq!(key.limits, Some(limits(Some(3), None, Some(10))));
    assert!(key.model_limits.is_empty());
    assert_eq!(
        settings_limits(&snapshot),
        vec![
            scoped(
                pb::BudgetScope::Global,
                "",
                limits(Some(100), Some(10000), Some(50))
            ),
            scoped(
                pb::BudgetScope::User,
                "user-1",
                limits(Some(5), Some(5000), None)
            ),
            scoped(pb::BudgetScope::User, "user-2", limits(None, None, Some(2))),
            scoped(
                pb::BudgetScope::Team,
                "team-a",
                limits(None, Some(70), None)
            ),
        ]
    );
    let deployment = |id: &str| {
        snapshot
            .deployments
            .iter()
            .find(|deployment| deployment.id == id)
            .unwrap()
            .limits
    };
    assert_eq!(
        deployment("gpt-limited"),
        Some(limits(Some(600), Some(90000), Some(20)))
    );
    assert_eq!(deployment("gpt-unlimited"), None);
    assert_eq!(deployment("api-1"), Some(limits(None, Some(123), None)));

    // /model/info shows them in litellm_params; an update keeps those it does not name.
    let info = plane
        .get("/model/info", &[("litellm_model_id", "gpt-limited")])
        .await;
    let params = &info["data"][0]["litellm_params"];
    assert_eq!(
        (
            &params["rpm"],
            &params["tpm"],
            &params["max_parallel_requests"]
        ),
        (&json!(600), &json!(90000), &json!(20))
    );
    let updated = plane
        .ok(
            "/model/update",
            json!({"model_info": {"id": "api-1"}, "litellm_params": {"rpm": 9}}),
        )
        .await;
    assert_eq!(updated["litellm_params"]["rpm"], 9);
    assert_eq!(updated["litellm_params"]["tpm"], 123);
    let stored = plane.store.deployment("api-1").await.unwrap().unwrap();
    assert_eq!(
        stored.record.limits,
        tollgate::store::RateLimitFields {
            rpm: Some(9),
            tpm: Some(123),
            max_parallel_requests: None
        }
    );
    let cleared = plane
        .ok(
            "/model/update",
            json!({"model_info": {"id": "api-1"}, "litellm_params": {"rpm": null, "tpm": null}}),
        )
        .await;
    assert_eq!(cleared["litellm_params"].get("rpm"), None);
    let snapshot = load_snapshot(&plane.store).await.unwrap();
    assert_eq!(
        snapshot
            .deployments
            .iter()
            .find(|deployment| deployment.id == "api-1")
            .unwrap()
            .limits,
        None
    );

    // Without the settings, no GLOBAL entry and no default; the users' own stay.
    plane
        .store
        .replace_config(&load(CONFIG).config)
        .await
        .unwrap();
    let snapshot = load_snapshot(&plane.store).await.unwrap();
    assert_eq!(
        settings_limits(&snapshot),
        vec![
            scoped(pb::BudgetScope::User, "user-1", limits(Some(5), None, None)),
            scoped(
                pb::BudgetScope::Team,
                "team-a",
                limits(None, Some(70), None)
            ),
        ]
    );
    assert_eq!(
        key_of(&snapshot, &defaulted).limits,
        Some(limits(Some(3), None, None))
    );
    plane.stop().await;
}
on_both!(
    config_and_snapshot,
    config_and_snapshot_sqlite,
    config_and_snapshot_postgres
);

/// The next update a filter gets, which must be a delta.
async fn next_delta(filter: &mut common::FakeFilter) -> pb::SnapshotDelta {
    match filter.next_update().await {
        Update::Delta(delta) => delta,
        Update::Snapshot(snapshot) => panic!("a full snapshot: {}", snapshot.version),
    }
}

async fn changes_reach_filters_as_deltas(db: Db) {
    let plane = Plane::start(db.url(), LIMITS_CONFIG).await;
    let created = plane.ok("/key/generate", json!({"key_alias": "k"})).await;
    let clear = created["key"].as_str().unwrap().to_string();
    let token = created["token"].as_str().unwrap().to_string();
    plane
        .ok(
            "/user/new",
            json!({"user_id": "u1", "auto_create_key": false}),
        )
        .await;
    plane.ok("/team/new", json!({"team_id": "t1"})).await;
    plane.hub.refresh().await.unwrap();

    let mut filter = common::FakeFilter::connect(plane.grpc).await;
    let snapshot = filter.next_snapshot().await;
    filter.hello("envoy-r", "1", snapshot.version).await;
    assert_eq!(
        key_of(&snapshot, &token).limits,
        Some(limits(None, None, Some(10)))
    );

    // A key's limits: a key delta, settings unchanged.
    plane
        .ok(
            "/key/update",
            json!({"key": clear, "rpm_limit": 4, "model_tpm_limit": {"gpt": 40}}),
        )
        .await;
    let delta = next_delta(&mut filter).await;
    assert_eq!(delta.settings, None);
    assert_eq!(delta.keys.len(), 1);
    assert_eq!(delta.keys[0].limits, Some(limits(Some(4), None, Some(10))));
    assert_eq!(
        delta.keys[0].model_limits,
        HashMap::from([("gpt".to_string(), limits(None, Some(40), None))])
    );

    // A user's or team's: a settings change, no key.
    plane
        .ok("/user/update", json!({"user_id": "u1", "tpm_limit": 77}))
        .await;
    let delta = next_delta(&mut filter).await;
    assert!(delta.keys.is_empty(), "{:?}", delta.keys);
    let settings = delta.settings.unwrap();
    assert!(settings.rate_limits.contains(&scoped(
        pb::BudgetScope::User,
        "u1",
        limits(None, Some(77), None)
    )));
    plane
        .ok(
            "/team/update",
            json!({"team_id": "t1", "max_parallel_requests": 6}),
        )
        .await;
    let delta = next_delta(&mut filter).await;
    assert!(delta.keys.is_empty(), "{:?}", delta.keys);
    assert_eq!(
        delta.settings.unwrap().rate_limits.last(),
        Some(&scoped(
            pb::BudgetScope::Team,
            "t1",
            limits(None, None, Some(6))
        ))
    );

    // A new default max_parallel_requests changes every key without one of its own.
    let changed = LIMITS_CONFIG.replace("max_parallel_requests: 10", "max_parallel_requests: 3");
    plane
        .store
        .replace_config(&load(&changed).config)
        .await
        .unwrap();
    plane.hub.refresh().await.unwrap();
    let delta = next_delta(&mut filter).await;
    assert_eq!(delta.keys.len(), 1);
    assert_eq!(delta.keys[0].limits, Some(limits(Some(4), None, Some(3))));
    let held = filter.held.clone().unwrap();
    assert_eq!(held, load_snapshot(&plane.store).await.unwrap());
    plane.stop().await;
}
on_both!(
    changes_reach_filters_as_deltas,
    changes_reach_filters_as_deltas_sqlite,
    changes_reach_filters_as_deltas_postgres
);
