#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Ollama's native chat API end to end: real Envoy (2 workers) + filter + control plane + the
//! mock's `/api/chat`, which streams newline-delimited JSON unless told not to, reads the
//! body as Ollama's Go decoder does (and refuses OpenAI's shapes: `max_tokens` at the top,
//! content arrays, data URLs as images, tool call arguments as strings), and here wants
//! `authorization: Bearer` with its key (Ollama behind a proxy; a keyless Ollama is the
//! Python suite's). The mock counts a token per word, so every count below is exact.

use std::time::Duration;

use serde_json::{json, Value};
use tollgate_e2e::{eventually, Gateway, Mock, ProviderEnv, MOCK_OLLAMA_KEY};

const MASTER_KEY: &str = "sk-master-ollama";

fn config(mock: &Mock) -> String {
    format!(
        "model_list:\n\
         - model_name: ollama-llama\n\
         \x20 litellm_params:\n\
         \x20   model: ollama/llama3.2\n\
         \x20   api_base: {url}\n\
         \x20   api_key: {MOCK_OLLAMA_KEY}\n\
         - model_name: ollama-chat-api-base\n\
         \x20 litellm_params:\n\
         \x20   model: ollama_chat/llama3.1:8b\n\
         \x20   api_base: {url}/api\n\
         \x20   api_key: {MOCK_OLLAMA_KEY}\n\
         - model_name: ollama-no-key\n\
         \x20 litellm_params:\n\
         \x20   model: ollama/llama3.2\n\
         \x20   api_base: {url}\n\
         - model_name: ollama-missing\n\
         \x20 litellm_params:\n\
         \x20   model: ollama_chat/missing-model\n\
         \x20   api_base: {url}\n\
         \x20   api_key: {MOCK_OLLAMA_KEY}\n\
         general_settings:\n\
         \x20 master_key: {MASTER_KEY}\n",
        url = mock.url
    )
}

type Env = ProviderEnv;

fn chunks_json(data: &[String]) -> Vec<Value> {
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    data[..data.len() - 1]
        .iter()
        .map(|chunk| serde_json::from_str(chunk).unwrap())
        .collect()
}

fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect()
}

fn header<'a>(request: &'a Value, name: &str) -> Option<&'a str> {
    request["headers"][name].as_str()
}

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
            "required": ["location"]}}}])
}

fn buffered(env: &Env) {
    let (status, body) = env.chat(&json!({
        "model": "ollama-llama", "user": "ollama-e2e-buffered",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello ollama"}],
        "temperature": 0.2, "max_tokens": 50
    }));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "llama3.2");
    assert!(
        body["id"].as_str().unwrap().starts_with("chatcmpl-"),
        "{body}"
    );
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: hello ollama"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    // "be brief" + "hello ollama" in, "echo: hello ollama" out.
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 0}})
    );

    let upstream = env.upstream();
    assert_eq!(upstream["path"], "/api/chat");
    assert_eq!(
        header(&upstream, "authorization"),
        Some(format!("Bearer {MOCK_OLLAMA_KEY}").as_str()),
        "the deployment's key, never the client's"
    );
    // Ollama streams unless told not to: `stream: false` is sent.
    assert_eq!(
        upstream["body"],
        json!({"model": "llama3.2", "messages": [{"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello ollama"}],
            "options": {"temperature": 0.2, "num_predict": 50}, "stream": false})
    );

    // ollama_chat/ on a base that already ends in /api: /api/chat, not /api/api/chat.
    let (status, body) = env.chat(&json!({"model": "ollama-chat-api-base",
        "messages": [{"role": "user", "content": "joined once"}]}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "llama3.1:8b");
    assert_eq!(env.upstream()["path"], "/api/chat");

    // JSON mode.
    let (status, body) = env.chat(
        &json!({"model": "ollama-llama", "response_format": {"type": "json_object"},
        "messages": [{"role": "user", "content": "as json"}]}),
    );
    assert_eq!(status, 200, "{body}");
    let content: Value =
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(content, json!({"echo": "as json"}));
    assert_eq!(env.upstream()["body"]["format"], "json");

    // A reply cut at max_tokens says so.
    let (_, body) = env.chat(&json!({"model": "ollama-llama", "max_completion_tokens": 2,
        "messages": [{"role": "user", "content": "one two three"}]}));
    assert_eq!(body["choices"][0]["message"]["content"], "echo: one");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(env.upstream()["body"]["options"], json!({"num_predict": 2}));

    // A prompt Ollama served from its cache has no prompt_eval_count: the client reads 0,
    // the record says "not reported".
    let (status, body) = env.chat(
        &json!({"model": "ollama-llama", "user": "ollama-e2e-cached",
        "messages": [{"role": "user", "content": "again mock:cached_prompt"}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 0, "completion_tokens": 3, "total_tokens": 3,
            "prompt_tokens_details": {"cached_tokens": 0}})
    );
}

fn streamed(env: &Env) {
    let chunks = chunks_json(&env.stream(&json!({
        "model": "ollama-llama", "stream": true, "stream_options": {"include_usage": true},
        "user": "ollama-e2e-stream", "messages": [{"role": "user", "content": "stream from ollama"}]
    })));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(streamed_text(&chunks), "echo: stream from ollama");
    let finishes: Vec<&Value> = chunks
        .iter()
        .map(|chunk| &chunk["choices"][0]["finish_reason"])
        .filter(|reason| !reason.is_null())
        .collect();
    assert_eq!(finishes, [&json!("stop")]);
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"), "{id}");
    assert!(chunks.iter().all(|chunk| chunk["id"] == id));
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 0}})
    );
    let upstream = env.upstream();
    assert_eq!(upstream["path"], "/api/chat");
    assert_eq!(upstream["body"]["stream"], true);
    assert!(upstream["body"].get("stream_options").is_none());

    // Without include_usage: no usage chunk; one chunk per streamed word.
    let chunks = chunks_json(&env.stream(&json!({"model": "ollama-llama", "stream": true,
        "messages": [{"role": "user", "content": "count mock:chunks=50"}]})));
    assert!(chunks.iter().all(|chunk| chunk.get("usage").is_none()));
    let content_chunks = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .count();
    assert_eq!(content_chunks, 50);

    // An error line mid-stream reaches the client as one OpenAI error event, no [DONE].
    let data = env.stream(&json!({"model": "ollama-llama", "stream": true,
        "messages": [{"role": "user", "content": "break mock:stream_error"}]}));
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(
        last,
        json!({"error": {"message": "an error was encountered while running the model",
            "type": "api_error", "param": null, "code": null}})
    );
    assert!(!data.iter().any(|event| event == "[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|chunk| serde_json::from_str(chunk).unwrap())
        .collect();
    assert_eq!(streamed_text(&chunks), "echo:");
}

fn tool_round_trip(env: &Env) {
    let (status, body) = env.chat(&json!({"model": "ollama-llama", "tools": tools(),
        "messages": [{"role": "user", "content": "weather in Paris?"}]}));
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert!(choice["message"]["content"].is_null());
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    // Ollama's object, as OpenAI's JSON text.
    assert_eq!(
        call["function"]["arguments"],
        r#"{"location":"Paris","unit":"celsius"}"#
    );
    // The mock gives no id (as Ollama before 0.12.10): the gateway makes one.
    let id = call["id"].as_str().unwrap();
    assert!(id.starts_with("call_") && id.ends_with("_0"), "{id}");
    // Ollama takes OpenAI's function tool shape as it is.
    assert_eq!(env.upstream()["body"]["tools"], tools());

    // The result goes back as a tool message naming the function; the call with its
    // arguments as an object (the mock refuses them as a string).
    let (status, body) = env.chat(
        &json!({"model": "ollama-llama", "tools": tools(), "messages": [
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": id, "content": "18C and sunny"}
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: 18C and sunny"
    );
    let messages = &env.upstream()["body"]["messages"];
    assert_eq!(
        messages[1],
        json!({"role": "assistant", "content": "", "tool_calls": [{"id": id,
            "function": {"name": "get_weather", "arguments": {"location": "Paris", "unit": "celsius"}}}]})
    );
    assert_eq!(
        messages[2],
        json!({"role": "tool", "content": "18C and sunny", "tool_name": "get_weather", "tool_call_id": id})
    );

    // Streamed: the call comes as one tool call delta with its id, name and arguments.
    let chunks = chunks_json(&env.stream(&json!({"model": "ollama-llama", "stream": true,
        "tools": tools(), "messages": [{"role": "user", "content": "weather?"}]})));
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    let arguments: String = calls
        .iter()
        .filter_map(|call| call["function"]["arguments"].as_str())
        .collect();
    assert_eq!(arguments, r#"{"location":"Paris","unit":"celsius"}"#);
    let finishes: Vec<&Value> = chunks
        .iter()
        .map(|chunk| &chunk["choices"][0]["finish_reason"])
        .filter(|reason| !reason.is_null())
        .collect();
    assert_eq!(finishes, [&json!("tool_calls")]);
}

fn images(env: &Env) {
    let (status, body) = env.chat(
        &json!({"model": "ollama-llama", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ", "detail": "low"}}
        ]}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: what is this [images: 2]"
    );
    // Bare base64, as Ollama decodes it (the mock refuses a data URL there).
    assert_eq!(
        env.upstream()["body"]["messages"][0],
        json!({"role": "user", "content": "what is this", "images": ["iVBORw0KGgo=", "/9j/4AAQ"]})
    );
    // An image URL the filter cannot fetch is the gateway's 400, naming the field.
    let (status, body) = env.chat(
        &json!({"model": "ollama-llama", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "and this"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["param"],
        "messages[0].content[1].image_url.url"
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("does not fetch image URLs"));
}

fn errors(env: &Env) {
    // Ollama's 404 for a model it does not have, buffered or streamed (its error is JSON).
    for stream in [false, true] {
        let (status, body) = env.chat(
            &json!({"model": "ollama-missing", "user": "ollama-e2e-errors", "stream": stream,
            "messages": [{"role": "user", "content": "x"}]}),
        );
        assert_eq!(status, 404, "{body}");
        assert_eq!(
            body,
            json!({"error": {"message": "model 'missing-model' not found",
                "type": "invalid_request_error", "param": null, "code": "model_not_found"}})
        );
    }

    // No key configured: none is sent, and this Ollama wants one.
    let (status, body) = env
        .chat(&json!({"model": "ollama-no-key", "messages": [{"role": "user", "content": "x"}]}));
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        body,
        json!({"error": {"message": "unauthorized", "type": "authentication_error",
            "param": null, "code": null}})
    );
    assert_eq!(header(&env.upstream(), "authorization"), None);

    let (status, body) = env.chat(&json!({"model": "ollama-llama", "messages": [{"role": "user", "content": "mock:status=429"}]}));
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error");

    let (status, body) = env.chat(&json!({"model": "ollama-llama", "messages": [{"role": "user", "content": "mock:raw_error"}]}));
    assert_eq!(status, 500, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("upstream exploded"));

    // What Ollama cannot be asked is the gateway's 400.
    let (status, body) = env.chat(&json!({"model": "ollama-llama", "tools": tools(),
        "tool_choice": "required", "messages": [{"role": "user", "content": "x"}]}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "tool_choice");
}

fn usage_recorded(env: &Env) {
    let token_counts = |row: &Value| {
        let tollgate = &row["metadata"]["tollgate"];
        (
            row["custom_llm_provider"].as_str().unwrap().to_string(),
            tollgate["http_status"].as_u64().unwrap(),
            tollgate["prompt_tokens"].as_u64(),
            tollgate["completion_tokens"].as_u64(),
            tollgate["stream"].as_bool().unwrap(),
        )
    };
    let rows = env.logs("ollama-e2e-buffered", 1);
    assert_eq!(
        token_counts(&rows[0]),
        ("ollama".into(), 200, Some(4), Some(3), false)
    );
    assert_eq!(rows[0]["model"], "ollama-llama");
    // Not reported is not 0.
    let rows = env.logs("ollama-e2e-cached", 1);
    assert_eq!(
        token_counts(&rows[0]),
        ("ollama".into(), 200, None, Some(3), false)
    );
    let rows = env.logs("ollama-e2e-stream", 1);
    assert_eq!(
        token_counts(&rows[0]),
        ("ollama".into(), 200, Some(3), Some(4), true)
    );
    let rows = env.logs("ollama-e2e-errors", 2);
    for row in &rows {
        let (provider, status, prompt, completion, _) = token_counts(row);
        assert_eq!(
            (provider.as_str(), status, prompt, completion),
            ("ollama_chat", 404, None, None)
        );
    }
}

fn stats(env: &Env) {
    assert!(eventually(Duration::from_secs(5), || {
        env.gateway.prometheus().is_ok_and(|text| {
            text.contains(r#"model="ollama-llama",provider="ollama",status="200""#)
        })
    }));
    let prometheus = env.gateway.prometheus().unwrap();
    assert!(
        prometheus.contains(r#"model="ollama-missing",provider="ollama_chat",status="404""#),
        "{prometheus}"
    );
    assert!(
        prometheus.contains(r#"model="ollama-no-key",provider="ollama",status="401""#),
        "{prometheus}"
    );
}

#[test]
fn ollama_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::start(dir.path()).unwrap();
    let gateway = Gateway::start(dir.path(), &config(&mock)).unwrap();
    let env = ProviderEnv::new(mock, gateway, MASTER_KEY);
    buffered(&env);
    streamed(&env);
    tool_round_trip(&env);
    images(&env);
    errors(&env);
    usage_recorded(&env);
    stats(&env);
    assert_eq!(env.gateway.filter_failures(), Vec::<String>::new());
}
