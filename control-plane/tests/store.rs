//! Storage on SQLite and PostgreSQL: the same scenarios run against both backends.
// Test helpers outside #[test] functions: a failure should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{sqlite_store, PgTestDb};
use tollgate::config::{self, Config, ProviderKind};
use tollgate::proto::UsageRecord;
use tollgate::store::{
    sha256_hex, Backend, DeploymentRecord, DeploymentSource, KeyRow, Missing, NewMember, Store,
    StoreError, Taken, TeamRow, UserRow, SETTING_MASTER_KEY_SHA256, SETTING_MAX_REQUEST_BODY_BYTES,
};

fn parse(text: &str) -> Config {
    config::parse(text, "test.yaml", &|_| None).unwrap().config
}

const CONFIG_A: &str = r#"
general_settings:
  master_key: sk-master
  max_request_size_mb: 2
model_list:
  - model_name: gpt
    litellm_params: {model: openai/gpt-4o, api_key: sk-openai}
  - model_name: claude
    litellm_params: {model: anthropic/claude-x}
    model_info: {id: claude-main, mode: chat}
"#;

const CONFIG_B: &str = r#"
model_list:
  - model_name: claude
    litellm_params: {model: anthropic/claude-y, max_tokens: 100}
    model_info: {id: claude-main}
  - model_name: llama
    litellm_params: {model: hosted_vllm/meta/llama, api_base: "http://127.0.0.1:8000/v1"}
"#;

fn api_deployment(id: &str) -> DeploymentRecord {
    DeploymentRecord {
        id: id.to_string(),
        model_name: "from-api".into(),
        provider_name: "openai".into(),
        kind: ProviderKind::OpenAi,
        upstream_model: "gpt-4o-mini".into(),
        api_base: "https://api.openai.com/v1".into(),
        api_key: Some("sk-api".into()),
        api_version: None,
        default_max_tokens: None,
        model_info: None,
        source: DeploymentSource::Api,
        position: 0,
    }
}

async fn config_replace_keeps_api_rows(store: &Store) {
    store
        .upsert_deployment(&api_deployment("api-1"))
        .await
        .unwrap();
    store.replace_config(&parse(CONFIG_A)).await.unwrap();

    let rows = store.deployments().await.unwrap();
    let ids: Vec<&str> = rows.iter().map(|row| row.record.id.as_str()).collect();
    let gpt_id = &parse(CONFIG_A).deployments[0].id;
    // Config rows first, in file order, then API rows.
    assert_eq!(ids, [gpt_id.as_str(), "claude-main", "api-1"]);
    let gpt = &rows[0].record;
    assert_eq!(gpt.source, DeploymentSource::Config);
    assert_eq!(gpt.api_key.as_deref(), Some("sk-openai"));
    assert_eq!(gpt.api_base, "https://api.openai.com/v1");
    assert_eq!(gpt.position, 0);
    let claude = &rows[1];
    assert_eq!(claude.record.kind, ProviderKind::Anthropic);
    assert_eq!(claude.record.default_max_tokens, Some(4096));
    assert_eq!(
        claude.record.model_info,
        Some(serde_json::json!({"id": "claude-main", "mode": "chat"}))
    );
    assert_eq!(rows[2].record, api_deployment("api-1"));

    let settings = store.settings().await.unwrap();
    assert_eq!(
        settings.get(SETTING_MASTER_KEY_SHA256),
        Some(&sha256_hex("sk-master"))
    );
    assert_eq!(
        settings
            .get(SETTING_MAX_REQUEST_BODY_BYTES)
            .map(String::as_str),
        Some("2097152")
    );
    assert!(
        !settings.values().any(|value| value.contains("sk-master")),
        "master key stored in clear"
    );

    // Reload with another config: config rows replaced, API row untouched, created_at of a
    // surviving id kept, settings the new config no longer has removed.
    let created_before = claude.created_at_ms;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store.replace_config(&parse(CONFIG_B)).await.unwrap();
    let rows = store.deployments().await.unwrap();
    let ids: Vec<&str> = rows.iter().map(|row| row.record.id.as_str()).collect();
    let llama_id = &parse(CONFIG_B).deployments[1].id;
    assert_eq!(ids, ["claude-main", llama_id.as_str(), "api-1"]);
    assert_eq!(rows[0].record.upstream_model, "claude-y");
    assert_eq!(rows[0].record.default_max_tokens, Some(100));
    assert_eq!(rows[0].created_at_ms, created_before);
    assert!(rows[0].updated_at_ms > created_before);
    assert_eq!(rows[1].record.upstream_model, "meta/llama");
    assert_eq!(rows[2].record, api_deployment("api-1"));
    let settings = store.settings().await.unwrap();
    assert_eq!(settings.get(SETTING_MASTER_KEY_SHA256), None);
    assert_eq!(settings.get(SETTING_MAX_REQUEST_BODY_BYTES), None);
}

async fn config_id_taken_by_api_row_rolls_back(store: &Store) {
    store.replace_config(&parse(CONFIG_A)).await.unwrap();
    store
        .upsert_deployment(&api_deployment("taken"))
        .await
        .unwrap();
    let clash = parse(
        "model_list:\n  - model_name: x\n    litellm_params: {model: openai/x}\n    model_info: {id: taken}\n",
    );
    match store.replace_config(&clash).await {
        Err(StoreError::IdTaken(id)) => assert_eq!(id, "taken"),
        other => panic!("expected IdTaken, got {other:?}"),
    }
    // Nothing of the failed load is visible: the previous config rows are still there.
    let rows = store.deployments().await.unwrap();
    let ids: Vec<&str> = rows.iter().map(|row| row.record.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(ids.contains(&"claude-main"));
    assert_eq!(
        rows.iter()
            .find(|r| r.record.id == "taken")
            .unwrap()
            .record
            .source,
        DeploymentSource::Api
    );
}

fn usage(id: &str, prompt: Option<u64>, completion: Option<u64>, started: u64) -> UsageRecord {
    UsageRecord {
        id: id.to_string(),
        model_name: "gpt".into(),
        deployment_id: "d1".into(),
        provider: "openai".into(),
        status: 200,
        prompt_tokens: prompt,
        completion_tokens: completion,
        cached_prompt_tokens: None,
        started_unix_ms: started,
        duration_ms: 123,
        stream: id.ends_with('s'),
        key_hash: "abc".into(),
        request_id: format!("client-{id}"),
    }
}

async fn usage_is_idempotent(store: &Store) {
    let batch = vec![
        usage("u1", Some(10), Some(0), 1_000),
        usage("u2s", None, None, 2_000),
        UsageRecord {
            cached_prompt_tokens: Some(7),
            ..usage("u3", Some(5), Some(6), 3_000)
        },
    ];
    assert_eq!(store.insert_usage(&batch).await.unwrap(), 3);
    assert_eq!(
        store.insert_usage(&batch).await.unwrap(),
        0,
        "resent batch counted again"
    );
    // A batch mixing old and new records stores only the new one.
    let mixed = vec![batch[0].clone(), usage("u4", Some(1), Some(1), 4_000)];
    assert_eq!(store.insert_usage(&mixed).await.unwrap(), 1);
    assert_eq!(store.usage_count().await.unwrap(), 4);

    let stored = store.usage_records().await.unwrap();
    assert_eq!(stored[0], batch[0], "0 tokens stays 0");
    assert_eq!(stored[1], batch[1], "not reported stays NULL");
    assert!(stored[1].stream);
    assert_eq!(stored[2], batch[2]);
    assert_eq!(stored[3].id, "u4");

    // Records without an id dedupe on their content.
    let anonymous = usage("", Some(1), Some(2), 5_000);
    assert_eq!(
        store
            .insert_usage(std::slice::from_ref(&anonymous))
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.insert_usage(&[anonymous]).await.unwrap(), 0);
    assert_eq!(store.usage_count().await.unwrap(), 5);
    assert_eq!(store.insert_usage(&[]).await.unwrap(), 0);
}

async fn snapshot_versions_increase(store: &Store) -> u64 {
    let first = store.next_snapshot_version(1_000).await.unwrap();
    assert!(first >= 1_000);
    // A clock going backwards (or two versions in one millisecond) still increases.
    let second = store.next_snapshot_version(500).await.unwrap();
    assert_eq!(second, first + 1);
    let third = store.next_snapshot_version(second + 100).await.unwrap();
    assert_eq!(third, second + 100);
    third
}

#[tokio::test]
async fn sqlite_config_replace_keeps_api_rows() {
    let (store, _dir) = sqlite_store().await;
    assert_eq!(store.backend(), Backend::Sqlite);
    config_replace_keeps_api_rows(&store).await;
}

#[tokio::test]
async fn postgres_config_replace_keeps_api_rows() {
    let db = PgTestDb::create().await;
    let store = common::connect(&db.url).await;
    assert_eq!(store.backend(), Backend::Postgres);
    config_replace_keeps_api_rows(&store).await;
    store.close().await;
}

#[tokio::test]
async fn sqlite_config_id_clash_rolls_back() {
    let (store, _dir) = sqlite_store().await;
    config_id_taken_by_api_row_rolls_back(&store).await;
}

#[tokio::test]
async fn postgres_config_id_clash_rolls_back() {
    let db = PgTestDb::create().await;
    let store = common::connect(&db.url).await;
    config_id_taken_by_api_row_rolls_back(&store).await;
    store.close().await;
}

#[tokio::test]
async fn sqlite_usage_is_idempotent() {
    let (store, _dir) = sqlite_store().await;
    usage_is_idempotent(&store).await;
}

#[tokio::test]
async fn postgres_usage_is_idempotent() {
    let db = PgTestDb::create().await;
    let store = common::connect(&db.url).await;
    usage_is_idempotent(&store).await;
    store.close().await;
}

#[tokio::test]
async fn sqlite_versions_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = Store::connect_sqlite_file(&path).await.unwrap();
    let last = snapshot_versions_increase(&store).await;
    store.close().await;
    // Reopening runs the migrations again (a no-op) and continues above the last version.
    let store = Store::connect_sqlite_file(&path).await.unwrap();
    assert_eq!(store.next_snapshot_version(0).await.unwrap(), last + 1);
    store.close().await;
}

#[tokio::test]
async fn postgres_versions_survive_reopening() {
    let db = PgTestDb::create().await;
    let store = common::connect(&db.url).await;
    let last = snapshot_versions_increase(&store).await;
    store.close().await;
    let store = common::connect(&db.url).await;
    assert_eq!(store.next_snapshot_version(0).await.unwrap(), last + 1);
    store.close().await;
}

#[tokio::test]
async fn sqlite_in_memory_keeps_its_data_across_pool_connections() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    store.set_setting("k", "v").await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            store.settings().await.unwrap().get("k").map(String::as_str),
            Some("v")
        );
    }
}

#[tokio::test]
async fn unsupported_and_unreachable_databases_are_clear_errors() {
    match Store::connect("mysql://u:secret@h/db").await {
        Err(error @ StoreError::UnsupportedUrl(_)) => {
            let message = error.to_string();
            assert!(!message.contains("secret"), "{message}");
            assert!(message.contains("mysql://u:***@h/db"), "{message}");
        }
        other => panic!("{:?}", other.err()),
    }
    // A SQLite file in a directory that does not exist cannot be created.
    match Store::connect("sqlite:///nonexistent-dir/x.db?mode=rwc").await {
        Err(StoreError::Connect { target, .. }) => assert!(target.contains("nonexistent-dir")),
        other => panic!("{:?}", other.err()),
    }
}

#[tokio::test]
async fn api_deployments_can_be_updated_and_deleted() {
    let (store, _dir) = sqlite_store().await;
    store.upsert_deployment(&api_deployment("a")).await.unwrap();
    let created = store.deployments().await.unwrap()[0].created_at_ms;
    let mut changed = api_deployment("a");
    changed.upstream_model = "gpt-4.1".into();
    store.upsert_deployment(&changed).await.unwrap();
    let rows = store.deployments().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].record.upstream_model, "gpt-4.1");
    assert_eq!(rows[0].created_at_ms, created);
    assert!(store.delete_deployment("a").await.unwrap());
    assert!(!store.delete_deployment("a").await.unwrap());
    assert!(store.deployments().await.unwrap().is_empty());
}

#[tokio::test]
async fn sqlite_url_without_mode_creates_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    let store = Store::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    store.set_setting("k", "v").await.unwrap();
    store.close().await;
    assert!(path.is_file());
    // An explicit read-only mode is respected: no file is created.
    let missing = dir.path().join("missing.db");
    assert!(
        Store::connect(&format!("sqlite://{}?mode=ro", missing.display()))
            .await
            .is_err()
    );
    assert!(!missing.exists());
}

fn key_row(token: &str, alias: Option<&str>, team: Option<&str>) -> KeyRow {
    KeyRow {
        token: token.into(),
        key_name: "sk-...test".into(),
        key_alias: alias.map(str::to_string),
        user_id: None,
        team_id: team.map(str::to_string),
        models: Vec::new(),
        blocked: false,
        expires_ms: None,
        metadata: serde_json::json!({}),
        created_at: 1,
        updated_at: 1,
    }
}

fn team_row(id: &str, alias: Option<&str>) -> TeamRow {
    TeamRow {
        team_id: id.into(),
        team_alias: alias.map(str::to_string),
        models: Vec::new(),
        metadata: serde_json::json!({}),
        blocked: false,
        members: Vec::new(),
        created_at: 1,
        updated_at: 1,
    }
}

fn member(user_id: Option<&str>) -> NewMember {
    NewMember {
        user_id: user_id.map(str::to_string),
        user_email: None,
        role: "user".into(),
    }
}

/// Storage answers in its own terms (what is missing or taken), never as the API would:
/// the management layer maps these to statuses and field names in one place.
async fn management_writes_fail_with_store_errors(store: &Store) {
    store.replace_config(&parse(CONFIG_A)).await.unwrap();
    let config_id = parse(CONFIG_A).deployments[0].id.clone();
    let missing = |error| match error {
        StoreError::NotFound(missing) => missing,
        other => panic!("expected NotFound, got {other:?}"),
    };
    let taken = |error| match error {
        StoreError::AlreadyExists(taken) => taken,
        other => panic!("expected AlreadyExists, got {other:?}"),
    };

    store
        .insert_key(&key_row("t1", Some("a1"), None))
        .await
        .unwrap();
    let error = store
        .insert_key(&key_row("t1", None, None))
        .await
        .unwrap_err();
    assert_eq!(taken(error), Taken::Key);
    let error = store
        .insert_key(&key_row("t2", Some("a1"), None))
        .await
        .unwrap_err();
    assert_eq!(taken(error), Taken::KeyAlias("a1".into()));
    let error = store
        .insert_key(&key_row("t2", None, Some("nope")))
        .await
        .unwrap_err();
    assert_eq!(missing(error), Missing::Team("nope".into()));
    let error = store
        .update_key(&key_row("t9", None, None), None)
        .await
        .unwrap_err();
    assert_eq!(missing(error), Missing::Key);
    let error = store
        .delete_keys(&["t1".into(), "t9".into()], &[])
        .await
        .unwrap_err();
    assert_eq!(missing(error), Missing::KeyInBatch { index: 1 });
    let error = store.delete_keys(&[], &["zz".into()]).await.unwrap_err();
    assert_eq!(
        missing(error),
        Missing::KeyAliasInBatch {
            index: 0,
            alias: "zz".into()
        }
    );
    // Nothing was deleted by the failed batches.
    assert!(store.key("t1").await.unwrap().is_some());

    let user = UserRow {
        user_id: "u1".into(),
        user_email: None,
        user_role: "internal_user".into(),
        models: Vec::new(),
        metadata: serde_json::json!({}),
        created_at: 1,
        updated_at: 1,
    };
    store.insert_user(&user, None).await.unwrap();
    let error = store.insert_user(&user, None).await.unwrap_err();
    assert_eq!(taken(error), Taken::User("u1".into()));

    store
        .insert_team(&team_row("team1", Some("alias1")), &[member(Some("u1"))])
        .await
        .unwrap();
    let error = store
        .insert_team(&team_row("team1", None), &[])
        .await
        .unwrap_err();
    assert_eq!(taken(error), Taken::Team("team1".into()));
    let error = store
        .insert_team(&team_row("team2", Some("alias1")), &[])
        .await
        .unwrap_err();
    assert_eq!(taken(error), Taken::TeamAlias("alias1".into()));
    let error = store
        .add_team_members("team1", &[member(Some("u1"))])
        .await
        .unwrap_err();
    assert_eq!(
        taken(error),
        Taken::Member {
            user_id: "u1".into(),
            team_id: "team1".into()
        }
    );
    let error = store
        .add_team_members("team1", &[member(Some("u2")), member(None)])
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::MemberWithoutUser { index: 1 }),
        "{error:?}"
    );
    let error = store
        .add_team_members("nope", &[member(Some("u1"))])
        .await
        .unwrap_err();
    assert_eq!(missing(error), Missing::Team("nope".into()));

    store
        .insert_api_deployment(&api_deployment("api-1"))
        .await
        .unwrap();
    let error = store
        .insert_api_deployment(&api_deployment("api-1"))
        .await
        .unwrap_err();
    assert_eq!(taken(error), Taken::Deployment("api-1".into()));
    let error = store.change_api_deployment("nope", None).await.unwrap_err();
    assert_eq!(missing(error), Missing::Deployment("nope".into()));
    let error = store
        .change_api_deployment(&config_id, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::ConfigDeployment(id) if *id == config_id),
        "{error:?}"
    );
}

#[tokio::test]
async fn sqlite_management_writes_fail_with_store_errors() {
    let (store, _dir) = sqlite_store().await;
    management_writes_fail_with_store_errors(&store).await;
}

#[tokio::test]
async fn postgres_management_writes_fail_with_store_errors() {
    let db = PgTestDb::create().await;
    let store = Store::connect(&db.url).await.unwrap();
    management_writes_fail_with_store_errors(&store).await;
    store.close().await;
}
