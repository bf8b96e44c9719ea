//! Budgets in the management API (HTTP and gRPC) and in config.yaml, on SQLite and
//! PostgreSQL: every field round-trips exactly, a `budget_duration` starts a window that
//! ends `created_at + duration`, bad values are 400s naming the field.
// Test helpers outside #[test] functions: a failure should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use serde_json::{json, Value};

use common::{authed, load, on_both, Db, Plane, CONFIG};
use tollgate::manage::iso8601;
use tollgate::proto::{self as pb};
use tollgate::store::{
    key_model_scope_id, now_unix_ms, sha256_hex, SETTING_BUDGET_DURATION, SETTING_MAX_BUDGET,
    SETTING_MAX_END_USER_BUDGET, SETTING_SOFT_BUDGET,
};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// The budget fields of an answer, for one exact comparison.
fn budget_of(value: &Value) -> Value {
    json!({
        "max_budget": value["max_budget"],
        "soft_budget": value["soft_budget"],
        "budget_duration": value["budget_duration"],
        "budget_reset_at": value["budget_reset_at"],
    })
}

async fn key_budgets(db: Db) {
    let plane = Plane::start(db.url(), CONFIG).await;

    let created = plane
        .ok(
            "/key/generate",
            json!({
                "key_alias": "budgeted",
                "max_budget": 12.5,
                "soft_budget": 10.25,
                "budget_duration": "30d",
                "model_max_budget": {
                    "gpt": 0.5,
                    "claude": {"budget_limit": 1.25, "time_period": "1d"},
                },
            }),
        )
        .await;
    let token = created["token"].as_str().unwrap().to_string();
    let clear = created["key"].as_str().unwrap().to_string();
    let (created_at, _) = plane.key_ms(&token).await;
    let window_end = created_at + 30 * DAY_MS;
    let expected = json!({
        "max_budget": 12.5,
        "soft_budget": 10.25,
        "budget_duration": "30d",
        "budget_reset_at": iso8601(window_end),
    });
    let model_budgets = json!({
        "gpt": 0.5,
        "claude": {"budget_limit": 1.25, "time_period": "1d"},
    });
    assert_eq!(budget_of(&created), expected);
    // Nothing spent yet: the whole budget is left.
    assert_eq!(created["remaining_budget"], json!(12.5));
    assert_eq!(created["model_max_budget"], model_budgets);
    assert_eq!(plane.reset_at("key", &token).await, Some(window_end));
    // Only the model with a time_period has a window of its own.
    assert_eq!(
        plane
            .reset_at("key_model", &key_model_scope_id(&token, "claude"))
            .await,
        Some(created_at + DAY_MS)
    );
    assert_eq!(
        plane
            .reset_at("key_model", &key_model_scope_id(&token, "gpt"))
            .await,
        None
    );

    let info = plane.get("/key/info", &[("key", &clear)]).await;
    assert_eq!(budget_of(&info["info"]), expected);
    assert_eq!(info["info"]["model_max_budget"], model_budgets);
    let list = plane
        .get("/key/list", &[("return_full_object", "true")])
        .await;
    assert_eq!(list["keys"].as_array().unwrap().len(), 1);
    assert_eq!(budget_of(&list["keys"][0]), expected);
    assert_eq!(list["keys"][0]["model_max_budget"], model_budgets);

    // null clears, a value replaces, an absent field stays; the window of the same length
    // keeps running.
    let updated = plane
        .ok(
            "/key/update",
            json!({
                "key": clear,
                "max_budget": null,
                "soft_budget": 3,
                "model_max_budget": {"gpt": {"budget_limit": 2, "time_period": "1h"}},
            }),
        )
        .await;
    let (_, updated_at) = plane.key_ms(&token).await;
    assert_eq!(
        budget_of(&updated),
        json!({
            "max_budget": null,
            "soft_budget": 3.0,
            "budget_duration": "30d",
            "budget_reset_at": iso8601(window_end),
        })
    );
    assert_eq!(
        updated["model_max_budget"],
        json!({"gpt": {"budget_limit": 2.0, "time_period": "1h"}})
    );
    assert_eq!(
        plane
            .reset_at("key_model", &key_model_scope_id(&token, "claude"))
            .await,
        None
    );
    assert_eq!(
        plane
            .reset_at("key_model", &key_model_scope_id(&token, "gpt"))
            .await,
        Some(updated_at + HOUR_MS)
    );

    // Another length starts a new window.
    let updated = plane
        .ok(
            "/key/update",
            json!({"key": clear, "budget_duration": "12h", "max_budget": 0}),
        )
        .await;
    let (_, updated_at) = plane.key_ms(&token).await;
    assert_eq!(
        budget_of(&updated),
        json!({
            "max_budget": 0.0,
            "soft_budget": 3.0,
            "budget_duration": "12h",
            "budget_reset_at": iso8601(updated_at + 12 * HOUR_MS),
        })
    );
    let twelve_hours_end = updated_at + 12 * HOUR_MS;
    // Still the window the first update started.
    let gpt_window_end = plane
        .reset_at("key_model", &key_model_scope_id(&token, "gpt"))
        .await
        .unwrap();

    // Regeneration keeps the budgets and both windows, under the new token.
    let regenerated = plane.ok("/key/regenerate", json!({"key": clear})).await;
    let new_token = regenerated["token"].as_str().unwrap().to_string();
    let new_clear = regenerated["key"].as_str().unwrap().to_string();
    assert_ne!(new_token, token);
    assert_eq!(
        budget_of(&regenerated),
        json!({
            "max_budget": 0.0,
            "soft_budget": 3.0,
            "budget_duration": "12h",
            "budget_reset_at": iso8601(twelve_hours_end),
        })
    );
    assert_eq!(
        regenerated["model_max_budget"],
        json!({"gpt": {"budget_limit": 2.0, "time_period": "1h"}})
    );
    assert_eq!(
        plane
            .reset_at("key_model", &key_model_scope_id(&new_token, "gpt"))
            .await,
        Some(gpt_window_end)
    );
    assert_eq!(
        plane
            .reset_at("key_model", &key_model_scope_id(&token, "gpt"))
            .await,
        None
    );

    // Clearing the duration and the model budgets: no window any more.
    let cleared = plane
        .ok(
            "/key/update",
            json!({"key": new_clear, "budget_duration": null, "model_max_budget": null}),
        )
        .await;
    assert_eq!(
        budget_of(&cleared),
        json!({
            "max_budget": 0.0,
            "soft_budget": 3.0,
            "budget_duration": null,
            "budget_reset_at": null,
        })
    );
    assert_eq!(cleared["model_max_budget"], json!({}));
    assert_eq!(
        plane
            .reset_at("key_model", &key_model_scope_id(&new_token, "gpt"))
            .await,
        None
    );

    // A key without a budget shows nulls.
    let plain = plane.ok("/key/generate", json!({})).await;
    assert_eq!(
        budget_of(&plain),
        json!({"max_budget": null, "soft_budget": null, "budget_duration": null,
               "budget_reset_at": null})
    );
    assert_eq!(plain["model_max_budget"], json!({}));
    plane.stop().await;
}
on_both!(key_budgets, key_budgets_sqlite, key_budgets_postgres);

async fn user_and_team_budgets(db: Db) {
    let plane = Plane::start(db.url(), CONFIG).await;

    let user = plane
        .ok(
            "/user/new",
            json!({"user_id": "ann", "max_budget": 100, "soft_budget": 80.5,
                   "budget_duration": "1mo", "auto_create_key": false}),
        )
        .await;
    let row = plane.store.user("ann").await.unwrap().unwrap();
    let expected = json!({
        "max_budget": 100.0,
        "soft_budget": 80.5,
        "budget_duration": "1mo",
        "budget_reset_at": iso8601(row.created_at + 30 * DAY_MS),
    });
    assert_eq!(budget_of(&user), expected);
    let info = plane.get("/user/info", &[("user_id", "ann")]).await;
    assert_eq!(budget_of(&info["user_info"]), expected);

    let before = plane.store.stored_version().await.unwrap();
    let updated = plane
        .ok(
            "/user/update",
            json!({"user_id": "ann", "max_budget": 50.25, "budget_duration": "1w",
                   "user_email": "ann@example.com", "user_role": "proxy_admin_viewer",
                   "models": ["gpt"], "metadata": {"tier": "gold"}}),
        )
        .await;
    let after = plane.store.stored_version().await.unwrap();
    assert!(after > before, "the update did not bump the version");
    let row = plane.store.user("ann").await.unwrap().unwrap();
    assert_eq!(
        budget_of(&updated),
        json!({
            "max_budget": 50.25,
            "soft_budget": 80.5,
            "budget_duration": "1w",
            "budget_reset_at": iso8601(row.updated_at + 7 * DAY_MS),
        })
    );
    assert_eq!(updated["user_email"], "ann@example.com");
    assert_eq!(updated["user_role"], "proxy_admin_viewer");
    assert_eq!(updated["models"], json!(["gpt"]));
    assert_eq!(updated["metadata"], json!({"tier": "gold"}));
    let info = plane.get("/user/info", &[("user_id", "ann")]).await;
    assert_eq!(budget_of(&info["user_info"]), budget_of(&updated));
    let (status, answer) = plane
        .post(
            "/user/update",
            json!({"user_id": "nobody", "max_budget": 1}),
        )
        .await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["error"]["param"], "user_id");

    let team = plane
        .ok(
            "/team/new",
            json!({"team_id": "t1", "team_alias": "one", "max_budget": 7.5,
                   "budget_duration": "2h"}),
        )
        .await;
    let row = plane.store.team("t1").await.unwrap().unwrap();
    let expected = json!({
        "max_budget": 7.5,
        "soft_budget": null,
        "budget_duration": "2h",
        "budget_reset_at": iso8601(row.created_at + 2 * HOUR_MS),
    });
    assert_eq!(budget_of(&team), expected);
    let info = plane.get("/team/info", &[("team_id", "t1")]).await;
    assert_eq!(budget_of(&info["team_info"]), expected);

    let updated = plane
        .ok(
            "/team/update",
            json!({"team_id": "t1", "team_alias": "uno", "max_budget": null,
                   "soft_budget": 1.5, "blocked": true, "models": ["gpt"]}),
        )
        .await;
    assert_eq!(
        budget_of(&updated),
        json!({
            "max_budget": null,
            "soft_budget": 1.5,
            "budget_duration": "2h",
            "budget_reset_at": iso8601(row.created_at + 2 * HOUR_MS),
        })
    );
    assert_eq!(updated["team_alias"], "uno");
    assert_eq!(updated["blocked"], true);
    assert_eq!(updated["models"], json!(["gpt"]));
    let info = plane.get("/team/info", &[("team_id", "t1")]).await;
    assert_eq!(budget_of(&info["team_info"]), budget_of(&updated));
    assert_eq!(info["team_info"]["team_alias"], "uno");
    let (status, answer) = plane
        .post("/team/update", json!({"team_id": "t2", "soft_budget": 1}))
        .await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["error"]["param"], "team_id");
    plane
        .ok("/team/new", json!({"team_id": "t2", "team_alias": "two"}))
        .await;
    let (status, answer) = plane
        .post(
            "/team/update",
            json!({"team_id": "t2", "team_alias": "uno"}),
        )
        .await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"]["param"], "team_alias");
    plane.stop().await;
}
on_both!(
    user_and_team_budgets,
    user_and_team_budgets_sqlite,
    user_and_team_budgets_postgres
);

async fn bad_budgets(db: Db) {
    let plane = Plane::start(db.url(), CONFIG).await;
    let key = plane.ok("/key/generate", json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_string();
    plane
        .ok(
            "/user/new",
            json!({"user_id": "u", "auto_create_key": false}),
        )
        .await;
    plane.ok("/team/new", json!({"team_id": "t"})).await;

    let cases: Vec<(&str, Value, &str)> = vec![
        ("/key/generate", json!({"max_budget": -1}), "max_budget"),
        ("/key/generate", json!({"max_budget": "ten"}), "max_budget"),
        ("/key/generate", json!({"soft_budget": -0.5}), "soft_budget"),
        (
            "/key/generate",
            json!({"budget_duration": "soon"}),
            "budget_duration",
        ),
        (
            "/key/generate",
            json!({"budget_duration": "3y"}),
            "budget_duration",
        ),
        (
            "/key/generate",
            json!({"budget_duration": "0d"}),
            "budget_duration",
        ),
        (
            "/key/generate",
            json!({"budget_duration": true}),
            "budget_duration",
        ),
        (
            "/key/generate",
            json!({"model_max_budget": [1]}),
            "model_max_budget",
        ),
        (
            "/key/generate",
            json!({"model_max_budget": {"gpt-4o": -1}}),
            "model_max_budget.gpt-4o",
        ),
        (
            "/key/generate",
            json!({"model_max_budget": {"gpt-4o": "1"}}),
            "model_max_budget.gpt-4o",
        ),
        (
            "/key/generate",
            json!({"model_max_budget": {"gpt-4o": {"budget_limit": -2}}}),
            "model_max_budget.gpt-4o.budget_limit",
        ),
        (
            "/key/generate",
            json!({"model_max_budget": {"gpt-4o": {"time_period": "1d"}}}),
            "model_max_budget.gpt-4o.budget_limit",
        ),
        (
            "/key/generate",
            json!({"model_max_budget": {"gpt-4o": {"budget_limit": 1, "time_period": "3y"}}}),
            "model_max_budget.gpt-4o.time_period",
        ),
        (
            "/key/generate",
            json!({"model_max_budget": {"gpt-4o": {"budget_limit": 1, "time_period": 5.5}}}),
            "model_max_budget.gpt-4o.time_period",
        ),
        (
            "/key/update",
            json!({"key": key, "max_budget": -3}),
            "max_budget",
        ),
        (
            "/key/update",
            json!({"key": key, "budget_duration": "1y"}),
            "budget_duration",
        ),
        (
            "/key/update",
            json!({"key": key, "model_max_budget": {"m": {"budget_limit": 1, "time_period": "x"}}}),
            "model_max_budget.m.time_period",
        ),
        ("/user/new", json!({"max_budget": -1}), "max_budget"),
        (
            "/user/new",
            json!({"budget_duration": "1x"}),
            "budget_duration",
        ),
        (
            "/user/update",
            json!({"user_id": "u", "soft_budget": -1}),
            "soft_budget",
        ),
        (
            "/user/update",
            json!({"user_id": "u", "user_role": "boss"}),
            "user_role",
        ),
        ("/user/update", json!({"max_budget": 1}), "user_id"),
        ("/team/new", json!({"soft_budget": "x"}), "soft_budget"),
        (
            "/team/update",
            json!({"team_id": "t", "budget_duration": "x"}),
            "budget_duration",
        ),
        (
            "/team/update",
            json!({"team_id": "t", "blocked": "yes"}),
            "blocked",
        ),
        ("/team/update", json!({"max_budget": 1}), "team_id"),
    ];
    for (path, body, param) in cases {
        plane.bad(path, body, param).await;
    }
    // Nothing bad was stored: the one key still has no budget.
    let row = plane.store.key(&sha256_hex(&key)).await.unwrap().unwrap();
    assert_eq!(row.budget, Default::default());
    assert!(row.model_max_budget.is_empty());
    plane.stop().await;
}
on_both!(bad_budgets, bad_budgets_sqlite, bad_budgets_postgres);

async fn grpc_budgets(db: Db) {
    let plane = Plane::start(db.url(), CONFIG).await;
    let mut client = plane.grpc_client().await;
    let generated = client
        .generate_key(authed(pb::GenerateKeyRequest {
            budget: Some(pb::BudgetLimits {
                max_budget: Some(4.5),
                soft_budget: None,
                budget_duration: "1d".into(),
                budget_reset_at_unix_ms: 0,
            }),
            model_max_budget: [(
                "gpt".to_string(),
                pb::ModelBudgetLimit {
                    budget_limit: 0.75,
                    time_period: "1h".into(),
                },
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let info = generated.info.unwrap();
    let (created_at, _) = plane.key_ms(&info.token).await;
    assert_eq!(
        info.budget,
        Some(pb::BudgetLimits {
            max_budget: Some(4.5),
            soft_budget: None,
            budget_duration: "1d".into(),
            budget_reset_at_unix_ms: u64::try_from(created_at + DAY_MS).unwrap(),
        })
    );
    assert_eq!(
        info.model_max_budget.get("gpt"),
        Some(&pb::ModelBudgetLimit {
            budget_limit: 0.75,
            time_period: "1h".into()
        })
    );
    // A budget message replaces the whole budget.
    let updated = client
        .update_key(authed(pb::UpdateKeyRequest {
            key: generated.key.clone(),
            budget: Some(pb::BudgetLimits {
                soft_budget: Some(2.0),
                ..Default::default()
            }),
            model_max_budget: Some(pb::ModelBudgetLimits::default()),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        updated.budget,
        Some(pb::BudgetLimits {
            max_budget: None,
            soft_budget: Some(2.0),
            budget_duration: String::new(),
            budget_reset_at_unix_ms: 0,
        })
    );
    assert!(updated.model_max_budget.is_empty());
    let status = client
        .update_key(authed(pb::UpdateKeyRequest {
            key: generated.key.clone(),
            budget: Some(pb::BudgetLimits {
                max_budget: Some(-1.0),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().starts_with("max_budget"), "{status:?}");

    let user = client
        .create_user(authed(pb::CreateUserRequest {
            user_id: "g-user".into(),
            no_key: true,
            budget: Some(pb::BudgetLimits {
                max_budget: Some(9.0),
                budget_duration: "2w".into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let row = plane.store.user("g-user").await.unwrap().unwrap();
    assert_eq!(
        user.budget.unwrap().budget_reset_at_unix_ms,
        u64::try_from(row.created_at + 14 * DAY_MS).unwrap()
    );
    let user = client
        .update_user(authed(pb::UpdateUserRequest {
            user_id: "g-user".into(),
            user_email: Some("g@example.com".into()),
            budget: Some(pb::BudgetLimits {
                max_budget: Some(3.0),
                budget_duration: "2w".into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(user.user_email, "g@example.com");
    assert_eq!(
        user.budget,
        Some(pb::BudgetLimits {
            max_budget: Some(3.0),
            soft_budget: None,
            budget_duration: "2w".into(),
            // Same length: the running window is kept.
            budget_reset_at_unix_ms: u64::try_from(row.created_at + 14 * DAY_MS).unwrap(),
        })
    );

    let team = client
        .create_team(authed(pb::CreateTeamRequest {
            team_id: "g-team".into(),
            budget: Some(pb::BudgetLimits {
                soft_budget: Some(1.0),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        team.budget,
        Some(pb::BudgetLimits {
            soft_budget: Some(1.0),
            ..Default::default()
        })
    );
    let team = client
        .update_team(authed(pb::UpdateTeamRequest {
            team_id: "g-team".into(),
            blocked: Some(true),
            budget: Some(pb::BudgetLimits {
                max_budget: Some(6.0),
                budget_duration: "1h".into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let row = plane.store.team("g-team").await.unwrap().unwrap();
    assert!(team.blocked);
    assert_eq!(
        team.budget,
        Some(pb::BudgetLimits {
            max_budget: Some(6.0),
            soft_budget: None,
            budget_duration: "1h".into(),
            budget_reset_at_unix_ms: u64::try_from(row.updated_at + HOUR_MS).unwrap(),
        })
    );
    plane.stop().await;
}
on_both!(grpc_budgets, grpc_budgets_sqlite, grpc_budgets_postgres);

const BUDGET_CONFIG: &str = r#"
general_settings:
  master_key: sk-test-master
  max_budget: 100.0
  soft_budget: 80.5
  budget_duration: "1d"
  budget_reset_at: "00:00"
litellm_settings:
  max_end_user_budget: 2.5
model_list:
  - model_name: gpt
    litellm_params:
      model: openai/gpt-4o
      api_key: sk-upstream-config
"#;

async fn config_budgets(db: Db) {
    let loaded = load(BUDGET_CONFIG);
    assert_eq!(loaded.warnings, []);
    let before = i64::try_from(now_unix_ms()).unwrap();
    let plane = Plane::start(db.url(), BUDGET_CONFIG).await;
    let after = i64::try_from(now_unix_ms()).unwrap();
    let settings = plane.store.state_snapshot().await.unwrap().settings;
    assert_eq!(
        settings.get(SETTING_MAX_BUDGET).map(String::as_str),
        Some("100")
    );
    assert_eq!(
        settings.get(SETTING_SOFT_BUDGET).map(String::as_str),
        Some("80.5")
    );
    assert_eq!(
        settings.get(SETTING_BUDGET_DURATION).map(String::as_str),
        Some("1d")
    );
    assert_eq!(
        settings
            .get(SETTING_MAX_END_USER_BUDGET)
            .map(String::as_str),
        Some("2.5")
    );
    // A day after loading, moved on to the next UTC midnight.
    let reset_at = plane.reset_at("global", "").await.unwrap();
    let expected = |now: i64| {
        let end = now + DAY_MS;
        end - end.rem_euclid(DAY_MS) + DAY_MS
    };
    assert!(
        reset_at == expected(before) || reset_at == expected(after),
        "{reset_at} is not the midnight after {before} + 1d"
    );
    assert_eq!(reset_at.rem_euclid(DAY_MS), 0);
    // Loading the same config again keeps the running window.
    plane.store.replace_config(&loaded.config).await.unwrap();
    assert_eq!(plane.reset_at("global", "").await, Some(reset_at));

    // A config without them removes the settings and stops the window.
    plane
        .store
        .replace_config(&load(CONFIG).config)
        .await
        .unwrap();
    let settings = plane.store.state_snapshot().await.unwrap().settings;
    for name in [
        SETTING_MAX_BUDGET,
        SETTING_SOFT_BUDGET,
        SETTING_BUDGET_DURATION,
        SETTING_MAX_END_USER_BUDGET,
    ] {
        assert_eq!(settings.get(name), None, "{name}");
    }
    assert_eq!(plane.reset_at("global", "").await, None);
    plane.stop().await;
}
on_both!(
    config_budgets,
    config_budgets_sqlite,
    config_budgets_postgres
);
