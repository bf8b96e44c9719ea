#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `POST /v1/embeddings` end to end: real Envoy (2 workers) + filter + control plane + the
//! mock's embeddings endpoints of OpenAI, Azure, Gemini, Cohere and Ollama, which check
//! their bodies and keys as the providers do. The mock's vectors are a function of the text
//! (reimplemented below as [`vector`]), multiples of 1/256, exact in `f32`; it counts a token
//! per word (Gemini counts none), so every value below is exact.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_e2e::{
    client, eventually, read_body, Gateway, Mock, MOCK_AWS_ACCESS_KEY_ID,
    MOCK_AWS_SECRET_ACCESS_KEY, MOCK_AZURE_KEY, MOCK_COHERE_KEY, MOCK_GEMINI_KEY, MOCK_OLLAMA_KEY,
    MOCK_OPENAI_KEY,
};

const MASTER_KEY: &str = "sk-master-embeddings";
/// USD per input token: a power of two, so every cost is exact in binary floating point.
const INPUT: f64 = 0.0009765625; // 2^-10

fn config(mock: &Mock) -> String {
    let priced = |name: &str, model: &str, base: &str, key: &str, extra: &str| {
        format!(
            "- model_name: {name}\n\
             \x20 litellm_params:\n\
             \x20   model: {model}\n\
             \x20   api_base: {base}\n\
             \x20   api_key: {key}\n\
             \x20   input_cost_per_token: {INPUT}\n{extra}"
        )
    };
    let url = &mock.url;
    [
        "model_list:\n".to_string(),
        priced(
            "emb-openai",
            "openai/text-embedding-3-small",
            &format!("{url}/v1"),
            MOCK_OPENAI_KEY,
            "",
        ),
        priced(
            "emb-azure",
            "azure/my-embedding",
            url,
            MOCK_AZURE_KEY,
            "\x20   api_version: 2024-10-21\n",
        ),
        priced(
            "emb-gemini",
            "gemini/gemini-embedding-001",
            url,
            MOCK_GEMINI_KEY,
            "",
        ),
        priced("emb-cohere", "cohere/embed-v4.0", url, MOCK_COHERE_KEY, ""),
        priced(
            "emb-ollama",
            "ollama/nomic-embed-text",
            url,
            MOCK_OLLAMA_KEY,
            "",
        ),
        priced(
            "emb-gemini-wrong-key",
            "gemini/gemini-embedding-001",
            url,
            "not-the-key",
            "",
        ),
        priced(
            "claude",
            "anthropic/claude-sonnet-4-5",
            url,
            "sk-mock-anthropic",
            "",
        ),
        format!(
            "- model_name: emb-vertex\n\
             \x20 litellm_params:\n\
             \x20   model: vertex_ai/text-embedding-005\n\
             \x20   api_base: {url}\n\
             \x20   vertex_project: tollgate-e2e\n\
             \x20   vertex_credentials: {credentials}\n\
             \x20   input_cost_per_token: {INPUT}\n",
            credentials = serde_json::to_string(&mock.vertex_credentials().unwrap()).unwrap()
        ),
        bedrock("emb-titan", "amazon.titan-embed-text-v2:0", url),
        bedrock("emb-bedrock-cohere", "cohere.embed-english-v3", url),
        format!("general_settings:\n\x20 master_key: {MASTER_KEY}\n"),
    ]
    .concat()
}

/// A Bedrock embedding deployment at the mock, signed with the mock's AWS key.
fn bedrock(name: &str, model: &str, url: &str) -> String {
    format!(
        "- model_name: {name}\n\
         \x20 litellm_params:\n\
         \x20   model: bedrock/{model}\n\
         \x20   api_base: {url}\n\
         \x20   aws_region_name: us-east-1\n\
         \x20   aws_access_key_id: {MOCK_AWS_ACCESS_KEY_ID}\n\
         \x20   aws_secret_access_key: {MOCK_AWS_SECRET_ACCESS_KEY}\n\
         \x20   input_cost_per_token: {INPUT}\n"
    )
}

/// The mock's vector of `text` (tests/mock/src/embeddings.rs): its bytes weighted by their
/// position, then `(hash + 37 i) mod 512 / 256 - 1`.
fn vector(text: &str, dimensions: u64) -> Vec<f64> {
    let hash: u64 = text
        .bytes()
        .enumerate()
        .map(|(at, byte)| u64::from(byte) * (at as u64 + 1))
        .sum();
    (0..dimensions)
        .map(|i| ((hash + 37 * i) % 512) as f64 / 256.0 - 1.0)
        .collect()
}

/// OpenAI's base64 of a vector: its little-endian `f32`s, standard alphabet, padded.
fn base64(vector: &[f64]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = vector
        .iter()
        .flat_map(|value| (*value as f32).to_le_bytes())
        .collect();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let padded = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let triple = u32::from_be_bytes([0, padded[0], padded[1], padded[2]]);
        for (index, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if index <= chunk.len() {
                out.push(ALPHABET[((triple >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

struct Env {
    mock: Mock,
    gateway: Gateway,
}

struct Answer {
    status: u16,
    cost: Option<String>,
    body: Value,
}

impl Env {
    fn embed_as(&self, key: &str, body: &Value) -> Answer {
        let response = client()
            .post(format!("{}/v1/embeddings", self.gateway.url))
            .bearer_auth(key)
            .json(body)
            .send()
            .unwrap();
        let status = response.status().as_u16();
        let cost = response
            .headers()
            .get("x-litellm-response-cost")
            .map(|value| value.to_str().unwrap().to_string());
        let text = read_body(response).unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        Answer { status, cost, body }
    }

    fn embed(&self, body: &Value) -> Answer {
        self.embed_as(MASTER_KEY, body)
    }

    fn upstream(&self) -> Value {
        self.mock.last_request().unwrap()
    }

    /// The spend log rows of requests sent with `user: end_user`, once there are `count`.
    fn logs(&self, end_user: &str, count: usize) -> Vec<Value> {
        let fetch = || -> Vec<Value> {
            client()
                .get(format!(
                    "{}/spend/logs?end_user={end_user}",
                    self.gateway.url
                ))
                .bearer_auth(MASTER_KEY)
                .send()
                .unwrap()
                .json::<Value>()
                .unwrap()
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        assert!(
            eventually(Duration::from_secs(15), || fetch().len() >= count),
            "{end_user}: {:?}",
            fetch()
        );
        fetch()
    }
}

const TEXTS: [&str; 2] = ["hello world", "embeddings are vectors"];

/// OpenAI's answer shape for `vectors` (float, or base64 strings).
fn answer(vectors: Vec<Value>, model: &str, tokens: Option<u64>) -> Value {
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, embedding)| json!({"object": "embedding", "index": index, "embedding": embedding}))
        .collect();
    let usage = tokens.map_or(
        Value::Null,
        |tokens| json!({"prompt_tokens": tokens, "total_tokens": tokens}),
    );
    json!({"object": "list", "data": data, "model": model, "usage": usage})
}

fn each_provider(env: &Env) {
    // (model, upstream model in the answer, the provider's token count, spend log provider)
    let cases = [
        ("emb-openai", "text-embedding-3-small", Some(5), "openai"),
        ("emb-azure", "my-embedding", Some(5), "azure"),
        ("emb-gemini", "gemini-embedding-001", None, "gemini"),
        ("emb-cohere", "embed-v4.0", Some(5), "cohere"),
        ("emb-ollama", "nomic-embed-text", Some(5), "ollama"),
    ];
    for (model, upstream_model, tokens, provider) in cases {
        // Cohere takes 256, 512, 1024 or 1536 dimensions; the others any size.
        let dimensions = if model == "emb-cohere" { 256 } else { 4 };
        let floats: Vec<Value> = TEXTS
            .iter()
            .map(|text| json!(vector(text, dimensions)))
            .collect();
        let strings: Vec<Value> = TEXTS
            .iter()
            .map(|text| json!(base64(&vector(text, dimensions))))
            .collect();
        for (format, vectors) in [("float", floats), ("base64", strings)] {
            let user = format!("e2e-{model}-{format}");
            let got = env.embed(&json!({
                "model": model, "input": TEXTS, "encoding_format": format,
                "dimensions": dimensions, "user": user,
            }));
            assert_eq!(got.status, 200, "{model} {format}: {}", got.body);
            assert_eq!(
                got.body,
                answer(vectors, upstream_model, tokens),
                "{model} {format}"
            );
            let cost = tokens.map(|tokens| (tokens as f64 * INPUT).to_string());
            assert_eq!(got.cost, cost, "{model} {format}");

            let rows = env.logs(&user, 1);
            let tollgate = &rows[0]["metadata"]["tollgate"];
            assert_eq!(rows[0]["model"], model);
            assert_eq!(rows[0]["custom_llm_provider"], provider);
            assert_eq!(tollgate["http_status"], 200);
            assert_eq!(tollgate["prompt_tokens"], json!(tokens), "{model}");
            assert_eq!(
                tollgate["completion_tokens"],
                json!(tokens.map(|_| 0)),
                "{model}"
            );
            assert_eq!(
                rows[0]["spend"].as_f64(),
                Some(tokens.map_or(0.0, |tokens| tokens as f64 * INPUT)),
                "{model}: {}",
                rows[0]
            );
        }
    }
}

/// The mock's token count of a text: its words, at least one.
fn words(text: &str) -> u64 {
    (text.split_whitespace().count() as u64).max(1)
}

fn vertex_and_bedrock(env: &Env) {
    // Vertex AI: the control plane's first access token must have reached Envoy.
    let first = json!({"model": "emb-vertex", "input": "warm up"});
    assert!(
        eventually(Duration::from_secs(20), || env.embed(&first).status == 200),
        "{}",
        env.embed(&first).body
    );
    let tokens: u64 = TEXTS.iter().map(|text| words(text)).sum();
    for (format, vectors) in [
        (
            "float",
            TEXTS
                .iter()
                .map(|text| json!(vector(text, 4)))
                .collect::<Vec<_>>(),
        ),
        (
            "base64",
            TEXTS
                .iter()
                .map(|text| json!(base64(&vector(text, 4))))
                .collect(),
        ),
    ] {
        let got = env.embed(&json!({"model": "emb-vertex", "input": TEXTS,
            "encoding_format": format, "dimensions": 4}));
        assert_eq!(got.status, 200, "{}", got.body);
        assert_eq!(
            got.body,
            answer(vectors, "text-embedding-005", Some(tokens))
        );
        assert_eq!(got.cost, Some((tokens as f64 * INPUT).to_string()));
    }
    let sent = env.upstream();
    assert_eq!(
        sent["path"],
        "/v1/projects/tollgate-e2e/locations/us-central1/publishers/google/models/text-embedding-005:predict"
    );
    assert!(sent["headers"]["authorization"]
        .as_str()
        .unwrap()
        .starts_with("Bearer ya29.mock-vertex-token-"));
    assert_eq!(
        sent["body"],
        json!({"instances": [{"content": TEXTS[0]}, {"content": TEXTS[1]}],
            "parameters": {"outputDimensionality": 4}})
    );

    // Titan: one text a request, signed with SigV4 (the mock verifies it).
    let got = env.embed(
        &json!({"model": "emb-titan", "input": TEXTS[0], "dimensions": 256,
        "user": "e2e-emb-titan"}),
    );
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(
        got.body,
        answer(
            vec![json!(vector(TEXTS[0], 256))],
            "amazon.titan-embed-text-v2:0",
            Some(words(TEXTS[0]))
        )
    );
    let sent = env.upstream();
    assert_eq!(sent["path"], "/model/amazon.titan-embed-text-v2%3A0/invoke");
    assert_eq!(
        sent["body"],
        json!({"inputText": TEXTS[0], "dimensions": 256})
    );
    let rows = env.logs("e2e-emb-titan", 1);
    assert_eq!(rows[0]["custom_llm_provider"], "bedrock");
    assert_eq!(
        rows[0]["metadata"]["tollgate"]["prompt_tokens"],
        words(TEXTS[0])
    );
    let (status, refused) = {
        let got = env.embed(&json!({"model": "emb-titan", "input": TEXTS}));
        (got.status, got.body)
    };
    assert_eq!(status, 400);
    assert_eq!(refused["error"]["param"], "input");

    // Cohere on Bedrock: many texts, a fixed size, no token count.
    let got = env.embed(&json!({"model": "emb-bedrock-cohere", "input": TEXTS,
        "encoding_format": "base64"}));
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(
        got.body,
        answer(
            TEXTS
                .iter()
                .map(|text| json!(base64(&vector(text, 8))))
                .collect(),
            "cohere.embed-english-v3",
            None
        )
    );
    assert_eq!(
        env.upstream()["body"],
        json!({"texts": TEXTS, "input_type": "search_document"})
    );
}

fn upstream_requests(env: &Env) {
    let got = env.embed(&json!({"model": "emb-gemini", "input": "hello", "dimensions": 3}));
    assert_eq!(got.status, 200, "{}", got.body);
    let sent = env.upstream();
    assert_eq!(
        sent["path"],
        "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    );
    assert_eq!(sent["headers"]["x-goog-api-key"], MOCK_GEMINI_KEY);
    assert_eq!(
        sent["body"],
        json!({"requests": [{"model": "models/gemini-embedding-001",
            "content": {"parts": [{"text": "hello"}]}, "outputDimensionality": 3}]})
    );

    let got = env.embed(&json!({"model": "emb-azure", "input": "hello"}));
    assert_eq!(got.status, 200, "{}", got.body);
    let sent = env.upstream();
    assert_eq!(
        sent["path"],
        "/openai/deployments/my-embedding/embeddings?api-version=2024-10-21"
    );
    assert_eq!(
        sent["body"],
        json!({"model": "my-embedding", "input": "hello"})
    );
    assert_eq!(got.body["data"][0]["embedding"], json!(vector("hello", 8)));

    let got = env.embed(&json!({"model": "emb-cohere", "input": "hello"}));
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(
        env.upstream()["body"],
        json!({"model": "embed-v4.0", "texts": ["hello"], "input_type": "search_document",
            "embedding_types": ["float"]})
    );

    // Token ids reach OpenAI as sent, one token each.
    let got = env.embed(&json!({"model": "emb-openai", "input": [[1, 2, 3]]}));
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(
        got.body["usage"],
        json!({"prompt_tokens": 3, "total_tokens": 3})
    );
    assert_eq!(env.upstream()["body"]["input"], json!([[1, 2, 3]]));
}

fn errors(env: &Env) {
    let error = |model: &str, input: Value| {
        let got = env.embed(&json!({"model": model, "input": input}));
        (got.status, got.body["error"].clone())
    };
    let (status, body) = error("emb-openai", json!(""));
    assert_eq!((status, body["param"].clone()), (400, json!("input")));
    assert_eq!(body["message"], "'input' must not be an empty string.");
    let (status, body) = error("emb-gemini", json!([1, 2]));
    assert_eq!((status, body["param"].clone()), (400, json!("input")));
    assert_eq!(
        body["message"],
        "Gemini embeds text only: send 'input' as a string or an array of strings, not token ids."
    );
    let (status, body) = error("claude", json!("hi"));
    assert_eq!(status, 400);
    assert_eq!(
        body["message"],
        "Model `claude` (provider anthropic) cannot serve embeddings: Anthropic has no embeddings API; use an embedding model of another provider."
    );
    let (status, body) = error("no-such-model", json!("hi"));
    assert_eq!(
        (status, body["code"].clone()),
        (404, json!("model_not_found"))
    );
    // Gemini's 400 API_KEY_INVALID is OpenAI's 401, as for chat.
    let (status, body) = error("emb-gemini-wrong-key", json!("hi"));
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        body["message"],
        "API key not valid. Please pass a valid API key."
    );
    let got = client()
        .get(format!("{}/v1/embeddings", env.gateway.url))
        .bearer_auth(MASTER_KEY)
        .send()
        .unwrap();
    assert_eq!(got.status(), 405);
}

/// A key with a budget of half an answer is served once (nothing spent before it), then
/// refused as for chat.
fn budget(env: &Env) {
    let response = client()
        .post(format!("{}/key/generate", env.gateway.url))
        .bearer_auth(MASTER_KEY)
        .json(&json!({"key_alias": "emb-budget", "max_budget": 2.5 * INPUT}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let key = response.json::<Value>().unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let start = Instant::now();
    let request = json!({"model": "emb-ollama", "input": TEXTS, "dimensions": 2});
    let first = loop {
        let got = env.embed_as(&key, &request);
        if got.status != 401 {
            break got;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "key never arrived"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.cost, Some((5.0 * INPUT).to_string()));
    // Every worker refuses once the control plane's spend reaches it, as for chat.
    let spent = || -> Option<f64> {
        let info: Value = client()
            .get(format!("{}/key/info", env.gateway.url))
            .query(&[("key", key.as_str())])
            .bearer_auth(MASTER_KEY)
            .send()
            .unwrap()
            .json()
            .unwrap();
        info["info"]["spend"].as_f64()
    };
    assert!(
        eventually(Duration::from_secs(15), || spent() == Some(5.0 * INPUT)),
        "{:?}",
        spent()
    );
    std::thread::sleep(Duration::from_millis(600));
    let refused = env.embed_as(&key, &request);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.body["error"]["type"], "budget_exceeded");
    assert_eq!(
        refused.body["error"]["message"],
        format!(
            "Budget has been exceeded! key emb-budget spent {} USD of its max budget of {} USD in this budget window.",
            5.0 * INPUT,
            2.5 * INPUT
        )
    );
}

#[test]
fn embeddings_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start_with_vertex(dir.path(), 3600).unwrap();
    let gateway = Gateway::start(dir.path(), &config(&mock)).unwrap();
    let env = Env { mock, gateway };
    each_provider(&env);
    vertex_and_bedrock(&env);
    upstream_requests(&env);
    errors(&env);
    budget(&env);
    assert_eq!(env.gateway.filter_failures(), Vec::<String>::new());
}
