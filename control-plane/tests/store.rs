//! Storage on SQLite and PostgreSQL: the same scenarios run against both backends.
// Test helpers outside #[test] functions: a failure should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{sqlite_store, PgTestDb};
use tollgate::config::{self, Config, DeploymentRouting, RouterConfig, Wire};
use tollgate::proto::{self, deployment::ProviderSettings as ProtoSettings, UsageRecord};
use tollgate::provider_settings::{AwsCredentials, BedrockSettings, ProviderSettings};
use tollgate::secrets::CredentialError;
use tollgate::store::{
    sha256_hex, Backend, CredentialReport, DeploymentRecord, DeploymentSource, KeyRow, Missing,
    NewMember, Store, StoreError, Taken, TeamRow, UserRow, SETTING_MASTER_KEY_SHA256,
    SETTING_MAX_REQUEST_BODY_BYTES, SETTING_ROUTER,
};
use tollgate::sync;

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
        kind: Wire::OpenAi,
        upstream_model: "gpt-4o-mini".into(),
        api_base: "https://api.openai.com/v1".into(),
        api_key: Some("sk-api".into()),
        api_version: None,
        default_max_tokens: None,
        model_info: None,
        pricing: Default::default(),
        limits: Default::default(),
        provider_settings: Default::default(),
        default_params: Default::default(),
        routing: Default::default(),
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
    assert_eq!(claude.record.kind, Wire::Anthropic);
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
        ..Default::default()
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

    // The positions of the records stored now: not those stored before, not a repeat.
    let resent = vec![
        batch[1].clone(),
        usage("u5", Some(1), Some(1), 6_000),
        usage("u5", Some(1), Some(1), 6_000),
        usage("", Some(9), Some(9), 7_000),
        batch[2].clone(),
    ];
    assert_eq!(store.insert_usage_new(&resent).await.unwrap(), [1, 3]);
    assert_eq!(
        store.insert_usage_new(&resent).await.unwrap(),
        Vec::<usize>::new()
    );
    assert_eq!(store.usage_count().await.unwrap(), 7);
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

const ROUTED_CONFIG: &str = r#"
model_list:
  - model_name: gpt
    litellm_params:
      model: openai/gpt-4o
      weight: 2
      order: 1
      tags: [eu, paid]
      timeout: 2.5
      stream_timeout: 10
      num_retries: 1
  - model_name: claude
    litellm_params: {model: anthropic/claude-x}
router_settings:
  routing_strategy: least-busy
  fallbacks: [{gpt: [claude]}]
  cooldown_time: 0.5
"#;

/// Routing fields of config and API deployments, and the router settings, as stored, read
/// back and sent; a config without them leaves none behind.
async fn routing_round_trips(store: &Store) {
    let config = parse(ROUTED_CONFIG);
    store.replace_config(&config).await.unwrap();
    let gpt_routing = DeploymentRouting {
        weight: Some(2.0),
        order: Some(1),
        tags: vec!["eu".into(), "paid".into()],
        timeout_ms: Some(2500),
        stream_timeout_ms: Some(10_000),
        num_retries: Some(1),
    };
    let rows = store.deployments().await.unwrap();
    assert_eq!(rows[0].record.routing, gpt_routing);
    assert_eq!(rows[1].record.routing, DeploymentRouting::default());
    let routed = DeploymentRecord {
        routing: DeploymentRouting {
            weight: Some(0.25),
            tags: vec!["batch".into()],
            num_retries: Some(0),
            ..DeploymentRouting::default()
        },
        ..api_deployment("api-routed")
    };
    store.upsert_deployment(&routed).await.unwrap();
    assert_eq!(
        store
            .deployment("api-routed")
            .await
            .unwrap()
            .unwrap()
            .record,
        routed
    );

    let settings = store.settings().await.unwrap();
    let stored: RouterConfig = serde_json::from_str(settings.get(SETTING_ROUTER).unwrap()).unwrap();
    assert_eq!(stored, config.router);
    assert_eq!(stored.cooldown_ms, 500);

    let snapshot = sync::load_snapshot(store).await.unwrap();
    assert_eq!(
        snapshot.settings.unwrap().router,
        Some(config.router.to_proto())
    );
    let fields = |d: &proto::Deployment| {
        (
            d.weight,
            d.order,
            d.tags.clone(),
            d.timeout_ms,
            d.stream_timeout_ms,
            d.num_retries,
        )
    };
    let sent: Vec<_> = snapshot.deployments.iter().map(fields).collect();
    assert_eq!(
        sent,
        [
            (
                2.0,
                1,
                vec!["eu".to_string(), "paid".to_string()],
                2500,
                10_000,
                Some(1)
            ),
            (0.0, 0, vec![], 0, 0, None),
            (0.25, 0, vec!["batch".to_string()], 0, 0, Some(0)),
        ]
    );

    // A config without routing keys: nothing stored, LiteLLM's defaults sent.
    store.replace_config(&parse(CONFIG_B)).await.unwrap();
    assert_eq!(store.settings().await.unwrap().get(SETTING_ROUTER), None);
    assert!(store
        .deployments()
        .await
        .unwrap()
        .iter()
        .filter(|row| row.record.source == DeploymentSource::Config)
        .all(|row| row.record.routing.is_empty()));
    let snapshot = sync::load_snapshot(store).await.unwrap();
    assert_eq!(
        snapshot.settings.unwrap().router,
        Some(RouterConfig::default().to_proto())
    );
}

#[tokio::test]
async fn sqlite_routing_round_trips() {
    let (store, _dir) = sqlite_store().await;
    routing_round_trips(&store).await;
}

#[tokio::test]
async fn postgres_routing_round_trips() {
    let db = PgTestDb::create().await;
    let store = common::connect(&db.url).await;
    routing_round_trips(&store).await;
    store.close().await;
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
        budget: Default::default(),
        model_max_budget: Default::default(),
        model_budget_durations: Default::default(),
        limits: Default::default(),
        model_rpm_limit: Default::default(),
        model_tpm_limit: Default::default(),
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
        budget: Default::default(),
        limits: Default::default(),
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
        budget: Default::default(),
        limits: Default::default(),
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
    let store = common::connect(&db.url).await;
    management_writes_fail_with_store_errors(&store).await;
    store.close().await;
}

// ---------------------------------------------------------------------------------------
// Provider keys at rest.

/// A SQLite file in a new directory, or a fresh PostgreSQL database; the URL and what keeps
/// the database alive.
async fn fresh_database(postgres: bool) -> (String, Box<dyn std::any::Any + Send>) {
    if postgres {
        let db = PgTestDb::create().await;
        (db.url.clone(), Box::new(db))
    } else {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("tollgate.db").display()
        );
        (url, Box::new(dir))
    }
}

fn store_without_key(store: Store) -> Store {
    store.with_credential_key(None)
}

async fn provider_keys_are_encrypted_at_rest(url: &str) {
    let store = common::connect(url).await;
    assert_eq!(
        store.prepare_credentials().await.unwrap(),
        CredentialReport::default()
    );
    store.replace_config(&parse(CONFIG_A)).await.unwrap();
    store
        .upsert_deployment(&api_deployment("api-1"))
        .await
        .unwrap();
    // Read back in clear, stored sealed: neither key appears in any row.
    let rows = store.deployments().await.unwrap();
    let keys: Vec<Option<&str>> = rows.iter().map(|r| r.record.api_key.as_deref()).collect();
    assert_eq!(keys, [Some("sk-openai"), None, Some("sk-api")]);
    let raw = common::raw_api_keys(url).await;
    let sealed: Vec<&str> = raw.iter().filter_map(|(_, key)| key.as_deref()).collect();
    assert_eq!(sealed.len(), 2, "{raw:?}");
    for value in &sealed {
        assert!(value.starts_with("enc:v1:"), "{value}");
        assert!(!value.contains("sk-"), "{value}");
    }
    let snapshot = store.state_snapshot().await.unwrap();
    assert_eq!(
        snapshot.deployments[2].record.api_key.as_deref(),
        Some("sk-api")
    );
    let gpt_id = parse(CONFIG_A).deployments[0].id.clone();
    store.close().await;

    // Restarted with the same key: everything opens.
    let store = common::connect(url).await;
    assert_eq!(
        store.prepare_credentials().await.unwrap(),
        CredentialReport {
            sealed: 2,
            migrated: 0
        }
    );
    store.close().await;

    // Another key: the start stops, naming the deployment and where the key came from, and
    // reads fail the same way instead of handing out ciphertext.
    let store = Store::connect(url)
        .await
        .unwrap()
        .with_credential_key(Some(common::credential_key_of("another key")));
    let message = store.prepare_credentials().await.unwrap_err().to_string();
    assert_eq!(
        message,
        "cannot decrypt the provider key of deployment \"api-1\" with the key from \
         LITELLM_SALT_KEY: it does not decrypt with this key (another key encrypted it, or it \
         was altered)"
    );
    assert!(matches!(
        store.deployments().await,
        Err(StoreError::Credentials(CredentialError::Unreadable { .. }))
    ));
    assert!(store.state_snapshot().await.is_err());
    assert!(store.deployment(&gpt_id).await.is_err());
    // Nothing was written: the right key still opens everything.
    let store = common::connect(url).await;
    assert_eq!(store.prepare_credentials().await.unwrap().sealed, 2);

    // No key at all: a clear error, never the sealed text as a key.
    let unkeyed = store_without_key(store.clone());
    assert_eq!(
        unkeyed.prepare_credentials().await.unwrap_err().to_string(),
        "the database holds encrypted provider keys (deployment \"api-1\") and neither \
         LITELLM_SALT_KEY nor TOLLGATE_SALT_KEY is set: set it to the key they were encrypted with"
    );
    assert!(matches!(
        unkeyed.deployments().await,
        Err(StoreError::Credentials(CredentialError::NoKeyToOpen { .. }))
    ));
    match unkeyed.replace_config(&parse(CONFIG_A)).await {
        Err(error) => assert_eq!(
            error.to_string(),
            format!(
                "deployment {gpt_id:?} has a provider key, and provider keys are stored \
                 encrypted: set LITELLM_SALT_KEY (or TOLLGATE_SALT_KEY) to a secret of your own \
                 for the control plane"
            )
        ),
        Ok(()) => panic!("a provider key was stored without a credential key"),
    }
    store.close().await;
}

async fn a_wrong_key_is_found_before_any_provider_key_is_stored(url: &str) {
    // The key check alone (no provider key stored yet) tells a wrong key.
    let store = common::connect(url).await;
    store.prepare_credentials().await.unwrap();
    store.close().await;
    let store = Store::connect(url)
        .await
        .unwrap()
        .with_credential_key(Some(common::credential_key_of("another key")));
    match store.prepare_credentials().await {
        Err(StoreError::Credentials(error @ CredentialError::WrongKey { .. })) => {
            assert!(
                error
                    .to_string()
                    .starts_with("the key from LITELLM_SALT_KEY is not the key this database's"),
                "{error}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Without a key and without provider keys, a store starts (and stores no provider key).
    let unkeyed = store_without_key(store);
    assert_eq!(
        unkeyed.prepare_credentials().await.unwrap(),
        CredentialReport::default()
    );
    unkeyed.replace_config(&parse(CONFIG_B)).await.unwrap();
    unkeyed.close().await;
}

async fn clear_keys_of_earlier_versions_are_sealed_at_startup(url: &str) {
    let store = store_without_key(common::connect(url).await);
    store.replace_config(&parse(CONFIG_B)).await.unwrap();
    let mut legacy = api_deployment("legacy");
    legacy.api_key = None;
    store.upsert_deployment(&legacy).await.unwrap();
    store.close().await;
    // As an earlier version stored it: in clear.
    common::raw_execute(
        url,
        "UPDATE deployments SET api_key = 'sk-legacy-clear' WHERE id = 'legacy'",
    )
    .await;

    // Without a key the start refuses rather than keep it in clear.
    let store = store_without_key(common::connect(url).await);
    assert_eq!(
        store.prepare_credentials().await.unwrap_err().to_string(),
        "deployment \"legacy\" stores its provider key in clear (written by an earlier version \
         of Tollgate): set LITELLM_SALT_KEY (or TOLLGATE_SALT_KEY) and start again to encrypt it"
    );
    store.close().await;

    let store = common::connect(url).await;
    assert_eq!(
        store.prepare_credentials().await.unwrap(),
        CredentialReport {
            sealed: 0,
            migrated: 1
        }
    );
    let raw = common::raw_api_keys(url).await;
    let stored = raw
        .iter()
        .find(|(id, _)| id == "legacy")
        .and_then(|(_, key)| key.clone())
        .unwrap();
    assert!(stored.starts_with("enc:v1:"), "{stored}");
    let rows = store.deployments().await.unwrap();
    let legacy = rows.iter().find(|row| row.record.id == "legacy").unwrap();
    assert_eq!(legacy.record.api_key.as_deref(), Some("sk-legacy-clear"));
    // A sealed key moved to another row does not open there.
    common::raw_execute(
        url,
        &format!(
            "UPDATE deployments SET api_key = '{stored}' WHERE id = '{}'",
            parse(CONFIG_B).deployments[0].id
        ),
    )
    .await;
    assert!(matches!(
        store.prepare_credentials().await,
        Err(StoreError::Credentials(CredentialError::Unreadable { ref deployment, .. }))
            if *deployment == "claude-main"
    ));
    store.close().await;
}

#[tokio::test]
async fn sqlite_provider_keys_are_encrypted_at_rest() {
    let (url, _db) = fresh_database(false).await;
    provider_keys_are_encrypted_at_rest(&url).await;
    // The file itself (WAL included) holds no provider key.
    let dir = std::path::Path::new(
        url.trim_start_matches("sqlite://")
            .trim_end_matches("?mode=rwc"),
    )
    .parent()
    .unwrap()
    .to_path_buf();
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("sk-openai") && !text.contains("sk-api"));
    }
}

#[tokio::test]
async fn postgres_provider_keys_are_encrypted_at_rest() {
    let (url, _db) = fresh_database(true).await;
    provider_keys_are_encrypted_at_rest(&url).await;
}

#[tokio::test]
async fn sqlite_a_wrong_key_is_found_before_any_provider_key_is_stored() {
    let (url, _db) = fresh_database(false).await;
    a_wrong_key_is_found_before_any_provider_key_is_stored(&url).await;
}

#[tokio::test]
async fn postgres_a_wrong_key_is_found_before_any_provider_key_is_stored() {
    let (url, _db) = fresh_database(true).await;
    a_wrong_key_is_found_before_any_provider_key_is_stored(&url).await;
}

#[tokio::test]
async fn sqlite_clear_keys_of_earlier_versions_are_sealed_at_startup() {
    let (url, _db) = fresh_database(false).await;
    clear_keys_of_earlier_versions_are_sealed_at_startup(&url).await;
}

#[tokio::test]
async fn postgres_clear_keys_of_earlier_versions_are_sealed_at_startup() {
    let (url, _db) = fresh_database(true).await;
    clear_keys_of_earlier_versions_are_sealed_at_startup(&url).await;
}

fn bedrock_deployment(id: &str) -> DeploymentRecord {
    DeploymentRecord {
        provider_name: "bedrock".into(),
        upstream_model: "anthropic.claude-3-5-haiku-20241022-v1:0".into(),
        api_base: "https://bedrock-runtime.eu-west-1.amazonaws.com".into(),
        api_key: None,
        provider_settings: ProviderSettings::Bedrock(BedrockSettings {
            region: "eu-west-1".into(),
            credentials: AwsCredentials {
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: "aws-secret-value".into(),
                session_token: Some("aws-token-value".into()),
            },
        }),
        default_params: serde_json::json!({"temperature": 0.2, "stop": ["END"]})
            .as_object()
            .cloned()
            .unwrap(),
        routing: Default::default(),
        ..api_deployment(id)
    }
}

async fn provider_credentials_are_encrypted_at_rest(url: &str) {
    let store = common::connect(url).await;
    store.prepare_credentials().await.unwrap();
    let bedrock = bedrock_deployment("bedrock-1");
    store.upsert_deployment(&bedrock).await.unwrap();
    store
        .upsert_deployment(&api_deployment("plain"))
        .await
        .unwrap();

    // Read back whole; stored as plain settings beside sealed credentials.
    let rows = store.deployments().await.unwrap();
    assert_eq!(rows[0].record, bedrock);
    assert_eq!(rows[1].record.provider_settings, ProviderSettings::None);
    let raw = common::raw_provider_settings(url).await;
    assert_eq!(raw[0].0, "bedrock-1");
    assert_eq!(
        raw[0].1.as_deref(),
        Some(r#"{"bedrock":{"region":"eu-west-1"}}"#)
    );
    let sealed = raw[0].2.as_deref().unwrap();
    assert!(sealed.starts_with("enc:v1:"), "{sealed}");
    assert!(
        !sealed.contains("AKID") && !sealed.contains("secret") && !sealed.contains("token"),
        "{sealed}"
    );
    assert_eq!(raw[1], ("plain".to_string(), None, None));

    // The filter gets them typed.
    let snapshot = store.state_snapshot().await.unwrap();
    let pushed = tollgate::provider_settings::to_proto(&snapshot.deployments[0].record);
    assert_eq!(
        pushed,
        Some(ProtoSettings::Bedrock(proto::BedrockSettings {
            region: "eu-west-1".into(),
            credentials: Some(proto::AwsCredentials {
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: "aws-secret-value".into(),
                session_token: "aws-token-value".into(),
            }),
        }))
    );
    assert_eq!(
        tollgate::provider_settings::to_proto(&snapshot.deployments[1].record),
        None
    );
    store.close().await;

    // At the next start the sealed credentials are checked with the provider keys.
    let store = common::connect(url).await;
    assert_eq!(
        store.prepare_credentials().await.unwrap(),
        CredentialReport {
            sealed: 2,
            migrated: 0
        }
    );
    store.close().await;
    let store = Store::connect(url)
        .await
        .unwrap()
        .with_credential_key(Some(common::credential_key_of("another key")));
    assert!(matches!(
        store.prepare_credentials().await,
        Err(StoreError::Credentials(CredentialError::Unreadable { .. }))
    ));
    store.close().await;

    // Sealed for its deployment: moved to another row it does not open.
    let store = common::connect(url).await;
    store
        .upsert_deployment(&bedrock_deployment("bedrock-2"))
        .await
        .unwrap();
    store.close().await;
    common::raw_execute(
        url,
        "UPDATE deployments SET provider_secret = \
         (SELECT provider_secret FROM deployments WHERE id = 'bedrock-1') WHERE id = 'bedrock-2'",
    )
    .await;
    let store = common::connect(url).await;
    assert!(matches!(
        store.deployments().await,
        Err(StoreError::Credentials(CredentialError::Unreadable { .. }))
    ));
    // Credentials in clear are never taken as they are.
    common::raw_execute(
        url,
        "UPDATE deployments SET provider_secret = '{\"aws\":{}}' WHERE id = 'bedrock-2'",
    )
    .await;
    match store.deployments().await {
        Err(StoreError::Corrupt(message)) => assert_eq!(
            message,
            "deployment bedrock-2: provider_secret is not encrypted"
        ),
        other => panic!("{other:?}"),
    }
    store.close().await;
}

#[tokio::test]
async fn sqlite_provider_credentials_are_encrypted_at_rest() {
    let (url, _db) = fresh_database(false).await;
    provider_credentials_are_encrypted_at_rest(&url).await;
}

#[tokio::test]
async fn postgres_provider_credentials_are_encrypted_at_rest() {
    let (url, _db) = fresh_database(true).await;
    provider_credentials_are_encrypted_at_rest(&url).await;
}
