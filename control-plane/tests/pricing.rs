//! Prices reach the filters: every deployment of a pushed snapshot carries the pricing
//! resolved from its litellm_params, model_info, general_settings.cost_per_token, the
//! operator's price file and the built-in table; for config models and for models added and
//! changed through the management API (HTTP and gRPC), across a restart, on SQLite and
//! PostgreSQL.
// Test helpers outside #[test] functions: a failure should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use serde_json::json;

use tollgate::app::{start_control_plane, StartError};
use tollgate::config::{self, LoadedConfig};
use tollgate::pricing::PriceFileError;
use tollgate::proto::{self as pb, Pricing, Snapshot};
use tollgate::sync;

use common::{authed, on_both, Db, Plane, Update, MASTER};

/// The operator's file: one model of their own, and an input price for gpt-4o over the
/// built-in one.
const PRICE_FILE: &str = r#"{
    "sample_spec": {"input_cost_per_token": 0.0, "max_input_tokens": "max input tokens"},
    "my-local-llm": {"input_cost_per_token": 1e-7, "output_cost_per_token": 2e-7, "mode": "chat"},
    "gpt-4o": {"input_cost_per_token": 2e-6, "litellm_provider": "openai"}
}"#;

fn config_text(price_file: &std::path::Path) -> String {
    format!(
        r#"
general_settings:
  master_key: {MASTER}
  cost_per_token: {{legacy: 0.00006}}
  model_prices_file: {}
model_list:
  - model_name: gpt
    litellm_params: {{model: openai/gpt-4o}}
  - model_name: claude
    litellm_params:
      model: anthropic/claude-3-5-haiku-20241022
      output_cost_per_token: 0.000005
    model_info: {{id: claude-1, input_cost_per_token: 0.0000009}}
  - model_name: legacy
    litellm_params: {{model: openai/gpt-4}}
  - model_name: local
    litellm_params: {{model: hosted_vllm/my-local-llm, api_base: "http://127.0.0.1:9/v1"}}
  - model_name: unpriced
    litellm_params: {{model: hosted_vllm/gpt-4o, api_base: "http://127.0.0.1:9/v1"}}
"#,
        price_file.display()
    )
}

fn load(text: &str) -> LoadedConfig {
    let loaded = config::parse(text, "pricing-test.yaml", &|_| None).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    loaded
}

fn pricing(
    input: Option<f64>,
    output: Option<f64>,
    cache_read: Option<f64>,
    cache_creation: Option<f64>,
) -> Option<Pricing> {
    Some(Pricing {
        input_cost_per_token: input,
        output_cost_per_token: output,
        cache_read_input_token_cost: cache_read,
        cache_creation_input_token_cost: cache_creation,
        output_cost_per_reasoning_token: None,
    })
}

/// Pricing by public model name.
fn priced(snapshot: &Snapshot) -> Vec<(String, Option<Pricing>)> {
    snapshot
        .deployments
        .iter()
        .map(|deployment| (deployment.model_name.clone(), deployment.pricing))
        .collect()
}

fn pricing_of(snapshot: &Snapshot, id: &str) -> Option<Pricing> {
    snapshot
        .deployments
        .iter()
        .find(|deployment| deployment.id == id)
        .unwrap_or_else(|| panic!("no deployment {id}"))
        .pricing
}

async fn prices_reach_the_filters(db: Db) {
    let url = db.url();
    let dir = tempfile::tempdir().unwrap();
    let price_file = dir.path().join("prices.json");
    std::fs::write(&price_file, PRICE_FILE).unwrap();
    let config = load(&config_text(&price_file));
    let plane = Plane::start_loaded(url, &config).await;
    let mut filter = common::FakeFilter::connect(plane.grpc).await;
    let first = filter.next_snapshot().await;
    filter.hello("envoy-prices", "1", 0).await;
    assert_eq!(
        priced(&first),
        [
            // The file's input price over the built-in table's; its output and cache prices.
            (
                "gpt".into(),
                pricing(Some(2e-6), Some(1e-5), Some(1.25e-6), None)
            ),
            // model_info's input, litellm_params' output, the table's cache prices.
            (
                "claude".into(),
                pricing(Some(9e-7), Some(5e-6), Some(8e-8), Some(1e-6))
            ),
            // cost_per_token for input and output; the table has no cache prices for gpt-4.
            ("legacy".into(), pricing(Some(6e-5), Some(6e-5), None, None)),
            // The operator's own model, from the file.
            ("local".into(), pricing(Some(1e-7), Some(2e-7), None, None)),
            // A self-hosted model named like OpenAI's is not priced as OpenAI's.
            ("unpriced".into(), None),
        ]
    );

    // /model/new with an input price: the table fills in the rest.
    let (status, created) = plane
        .post(
            "/model/new",
            json!({"model_name": "api-mini", "litellm_params": {
                "model": "openai/gpt-4.1-mini", "input_cost_per_token": 3e-7},
                "model_info": {"id": "api-1"}}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["litellm_params"]["input_cost_per_token"], 3e-7);
    let snapshot = filter
        .snapshot_where(|s| s.deployments.iter().any(|d| d.id == "api-1"))
        .await;
    assert_eq!(
        pricing_of(&snapshot, "api-1"),
        pricing(Some(3e-7), Some(1.6e-6), Some(1e-7), None)
    );

    // /model/update: a model_info output price, and the litellm_params input price cleared.
    let (status, updated) = plane
        .post(
            "/model/update",
            json!({"model_info": {"id": "api-1", "output_cost_per_token": 2e-6},
                "litellm_params": {"input_cost_per_token": null}}),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    // It arrives as a delta holding the changed deployment, as every deployment write does.
    let expected = pricing(Some(4e-7), Some(2e-6), Some(1e-7), None);
    loop {
        match filter.next_update().await {
            Update::Delta(delta)
                if delta
                    .deployments
                    .iter()
                    .any(|d| d.id == "api-1" && d.pricing == expected) =>
            {
                break
            }
            Update::Delta(_) => {}
            Update::Snapshot(_) => panic!("a price change was sent as a full snapshot"),
        }
    }
    assert_eq!(pricing_of(filter.held.as_ref().unwrap(), "api-1"), expected);

    // A bad price is refused with its field; nothing changes.
    let (status, refused) = plane
        .post(
            "/model/update",
            json!({"model_info": {"id": "api-1"},
                "litellm_params": {"cache_read_input_token_cost": -1}}),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(
        refused["error"]["param"],
        "litellm_params.cache_read_input_token_cost"
    );

    // gRPC: a Pricing message sets the litellm_params prices exactly.
    let mut client = plane.grpc_client().await;
    let model = client
        .update_model(authed(pb::UpdateModelRequest {
            id: "api-1".into(),
            pricing: Some(Pricing {
                cache_read_input_token_cost: Some(0.0),
                ..Pricing::default()
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(model.pricing, pricing(None, None, Some(0.0), None));
    let expected = pricing(Some(4e-7), Some(2e-6), Some(0.0), None);
    filter
        .snapshot_where(|s| pricing_of(s, "api-1") == expected)
        .await;
    let created = client
        .create_model(authed(pb::CreateModelRequest {
            model_name: "grpc-claude".into(),
            model: "anthropic/claude-haiku-4-5".into(),
            id: "grpc-1".into(),
            pricing: Some(Pricing {
                output_cost_per_reasoning_token: Some(7e-6),
                ..Pricing::default()
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        created
            .pricing
            .and_then(|p| p.output_cost_per_reasoning_token),
        Some(7e-6)
    );
    let haiku = Some(Pricing {
        output_cost_per_reasoning_token: Some(7e-6),
        ..pricing(Some(1e-6), Some(5e-6), Some(1e-7), Some(1.25e-6)).unwrap()
    });
    let snapshot = filter
        .snapshot_where(|s| s.deployments.iter().any(|d| d.id == "grpc-1"))
        .await;
    assert_eq!(pricing_of(&snapshot, "grpc-1"), haiku);
    let status = client
        .create_model(authed(pb::CreateModelRequest {
            model_name: "bad".into(),
            model: "openai/gpt-4o".into(),
            pricing: Some(Pricing {
                input_cost_per_token: Some(f64::NAN),
                ..Pricing::default()
            }),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("litellm_params.input_cost_per_token: must be a non-negative number"),
        "{}",
        status.message()
    );
    // What the hub serves is what a full read of the store gives with the same prices.
    let served = plane.hub.current();
    let full = sync::load_snapshot_priced(&plane.store, plane.hub.prices())
        .await
        .unwrap();
    assert_eq!(served.deployments, full.deployments);
    let before_restart = priced(&served);
    drop(filter);
    plane.stop().await;

    // After a restart the API models keep their prices (stored), the config's are the same.
    let plane = Plane::start_loaded(url, &config).await;
    let mut filter = common::FakeFilter::connect(plane.grpc).await;
    let snapshot = filter.next_snapshot().await;
    assert_eq!(priced(&snapshot), before_restart);
    assert_eq!(pricing_of(&snapshot, "api-1"), expected);
    assert_eq!(pricing_of(&snapshot, "grpc-1"), haiku);
    drop(filter);
    plane.stop().await;

    // A bad price file stops the start, naming the file and the entry.
    std::fs::write(
        &price_file,
        r#"{"my-local-llm": {"input_cost_per_token": "0.1"}}"#,
    )
    .unwrap();
    let store = common::connect(url).await;
    let error = start_control_plane(store.clone(), &config)
        .await
        .err()
        .expect("a bad price file was accepted");
    assert!(
        matches!(&error, StartError::Prices(PriceFileError::Invalid { path, .. }) if path == "\"my-local-llm\".input_cost_per_token"),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "{}: \"my-local-llm\".input_cost_per_token: must be a number, got a string",
            price_file.display()
        )
    );
    store.close().await;
}

on_both!(
    prices_reach_the_filters,
    prices_reach_the_filters_on_sqlite,
    prices_reach_the_filters_on_postgres
);
