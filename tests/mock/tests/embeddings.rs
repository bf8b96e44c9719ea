//! The embeddings endpoints of the mock: OpenAI, Azure, Gemini, Cohere and Ollama.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{json, Value};
use support::*;
use tollgate_mock::{base64_of, embedding_for_text, MockConfig};

/// "hello" in 3 dimensions: its bytes weighted by position sum to 1617.
const HELLO_3: [f64; 3] = [-0.68359375, -0.5390625, -0.39453125];

async fn keyed() -> String {
    start(MockConfig {
        openai_api_key: Some("sk-mock".into()),
        azure_api_key: Some("az-mock".into()),
        gemini_api_key: Some("AIza-mock".into()),
        cohere_api_key: Some("co-mock".into()),
        ollama_api_key: Some("ol-mock".into()),
        ..Default::default()
    })
    .await
}

async fn post(url: String, headers: &[(&str, &str)], body: &Value) -> (u16, Value) {
    let mut request = client().post(url).json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

const OPENAI_AUTH: [(&str, &str); 1] = [("authorization", "Bearer sk-mock")];

#[test]
fn vectors_are_multiples_of_1_256() {
    assert_eq!(embedding_for_text("hello", 3), HELLO_3);
    // -0.68359375, -0.5390625, -0.39453125 as little-endian f32.
    assert_eq!(base64_of(&HELLO_3), "AAAvvwAACr8AAMq+");
}

#[tokio::test]
async fn openai_float_base64_and_usage() {
    let base = keyed().await;
    let (status, body) = post(
        format!("{base}/v1/embeddings"),
        &OPENAI_AUTH,
        &json!({"model": "text-embedding-3-small", "input": ["hello", "two words"], "dimensions": 3}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "text-embedding-3-small");
    assert_eq!(
        body["data"][0],
        json!({"object": "embedding", "index": 0, "embedding": HELLO_3})
    );
    assert_eq!(body["data"][1]["index"], 1);
    assert_eq!(
        body["data"][1]["embedding"],
        json!(embedding_for_text("two words", 3))
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 3, "total_tokens": 3})
    );

    let (status, body) = post(
        format!("{base}/v1/embeddings"),
        &OPENAI_AUTH,
        &json!({"model": "m", "input": "hello", "dimensions": 3, "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["embedding"], "AAAvvwAACr8AAMq+");
    assert_eq!(body["usage"]["prompt_tokens"], 1);

    // Token ids: one token each; the default size is 8.
    let (status, body) = post(
        format!("{base}/v1/embeddings"),
        &OPENAI_AUTH,
        &json!({"model": "m", "input": [[1, 2, 3], [4]]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 4, "total_tokens": 4})
    );
}

#[tokio::test]
async fn openai_refuses_what_openai_refuses() {
    let base = keyed().await;
    let url = || format!("{base}/v1/embeddings");
    let (status, body) = post(url(), &[], &json!({"model": "m", "input": "a"})).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("invalid_api_key"))
    );
    for (request, message) in [
        (json!({"model": "m", "input": ""}), "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."),
        (json!({"model": "m", "input": []}), "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."),
        (json!({"model": "m"}), "Missing required parameter: 'input'."),
        (json!({"model": "m", "input": "a", "extra": 1}), "Unrecognized request argument supplied: extra"),
        (json!({"model": "m", "input": "a", "encoding_format": "int8"}), "Invalid value for 'encoding_format': \"int8\". Supported values are: 'float' and 'base64'."),
        (json!({"model": "m", "input": "a", "dimensions": 0}), "Invalid value for 'dimensions' = 0. Must be a positive integer up to 3072."),
    ] {
        let (status, body) = post(url(), &OPENAI_AUTH, &request).await;
        assert_eq!(status, 400, "{request}");
        assert_eq!(body["error"]["message"], message, "{request}");
    }
}

#[tokio::test]
async fn azure_needs_its_version_and_key() {
    let base = keyed().await;
    let url = format!("{base}/openai/deployments/emb/embeddings?api-version=2024-10-21");
    let (status, body) = post(
        url.clone(),
        &[("api-key", "az-mock")],
        &json!({"input": "hello", "dimensions": 3}),
    )
    .await;
    // Azure's body needs no model: the deployment is in the path.
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "emb");
    let (status, body) = post(
        url.clone(),
        &[("api-key", "az-mock")],
        &json!({"model": "emb", "input": "hello", "dimensions": 3}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"][0]["embedding"], json!(HELLO_3));
    let (status, _) = post(
        url,
        &[("api-key", "wrong")],
        &json!({"model": "emb", "input": "a"}),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = post(
        format!("{base}/openai/deployments/emb/embeddings"),
        &[("api-key", "az-mock")],
        &json!({"model": "emb", "input": "a"}),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn gemini_batch_embed_contents() {
    let base = keyed().await;
    let url = || format!("{base}/v1beta/models/gemini-embedding-001:batchEmbedContents");
    let key = [("x-goog-api-key", "AIza-mock")];
    let request = |model: &str, text: &str| json!({"model": model, "content": {"parts": [{"text": text}]}, "outputDimensionality": 3});
    let (status, body) = post(
        url(),
        &key,
        &json!({"requests": [request("models/gemini-embedding-001", "hello"), request("models/gemini-embedding-001", "x")]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"embeddings": [{"values": HELLO_3}, {"values": embedding_for_text("x", 3)}]})
    );
    let (status, body) = post(
        url(),
        &key,
        &json!({"requests": [request("models/other", "hello")]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(url(), &key, &json!({"requests": [], "x": 1})).await;
    assert_eq!(
        (status, body["error"]["status"].clone()),
        (400, json!("INVALID_ARGUMENT"))
    );
    let (status, body) = post(
        url(),
        &key,
        &json!({"requests": [{"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "a"}]}, "dimensions": 3}]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["message"],
        "Invalid JSON payload received. Unknown name \"dimensions\" at 'requests[0]': Cannot find field."
    );
    let (status, body) = post(
        url(),
        &[("x-goog-api-key", "bad")],
        &json!({"requests": [request("models/gemini-embedding-001", "a")]}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["details"][0]["reason"].clone()),
        (400, json!("API_KEY_INVALID"))
    );
}

#[tokio::test]
async fn cohere_v2_embed() {
    let base = keyed().await;
    let url = || format!("{base}/v2/embed");
    let auth = [("authorization", "Bearer co-mock")];
    let (status, body) = post(
        url(),
        &auth,
        &json!({"model": "embed-v4.0", "texts": ["hello", "two words"], "input_type": "search_document", "embedding_types": ["float"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["embeddings"]["float"][0],
        json!(embedding_for_text("hello", 8))
    );
    assert_eq!(body["meta"]["billed_units"]["input_tokens"], 3);
    assert_eq!(body["texts"], json!(["hello", "two words"]));
    let (status, body) = post(
        url(),
        &auth,
        &json!({"model": "embed-v4.0", "texts": ["hello"], "input_type": "search_query", "output_dimension": 256}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["embeddings"]["float"][0].as_array().unwrap().len(),
        256
    );
    for request in [
        json!({"model": "embed-v4.0", "texts": ["a"]}),
        json!({"model": "embed-v4.0", "texts": ["a"], "input_type": "query"}),
        json!({"model": "embed-v4.0", "texts": [], "input_type": "search_query"}),
        json!({"model": "embed-v4.0", "texts": ["a"], "input_type": "search_query", "output_dimension": 3}),
    ] {
        let (status, body) = post(url(), &auth, &request).await;
        assert_eq!(status, 400, "{request}: {body}");
    }
    let (status, _) = post(
        url(),
        &auth,
        &json!({"model": "m", "texts": ["a"], "input_type": "search_query", "input": "a"}),
    )
    .await;
    assert_eq!(status, 422);
    let (status, body) = post(
        url(),
        &[],
        &json!({"model": "m", "texts": ["a"], "input_type": "search_query"}),
    )
    .await;
    assert_eq!(
        (status, body["message"].clone()),
        (401, json!("no api key supplied"))
    );
}

#[tokio::test]
async fn ollama_api_embed() {
    let base = keyed().await;
    let auth = [("authorization", "Bearer ol-mock")];
    let (status, body) = post(
        format!("{base}/api/embed"),
        &auth,
        &json!({"model": "nomic-embed-text", "input": "hello", "dimensions": 3}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["embeddings"], json!([HELLO_3]));
    assert_eq!(body["prompt_eval_count"], 1);
    let (status, body) = post(
        format!("{base}/api/embed"),
        &auth,
        &json!({"model": "nomic-embed-text", "input": ["a b c", "d"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["prompt_eval_count"], 4);
    assert_eq!(body["embeddings"][1], json!(embedding_for_text("d", 8)));
    let (status, _) = post(format!("{base}/api/embed"), &auth, &json!({"input": "a"})).await;
    assert_eq!(status, 400);
    let (status, _) = post(
        format!("{base}/api/embed"),
        &auth,
        &json!({"model": "m", "input": [1, 2]}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = post(
        format!("{base}/api/embed"),
        &[],
        &json!({"model": "m", "input": "a"}),
    )
    .await;
    assert_eq!(status, 401);
}
