#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Cohere (v2 Chat API) end to end: real Envoy (2 workers) + filter + control plane + the
//! mock's `POST /v2/chat`, which checks the body as Cohere does (unknown fields such as an
//! untranslated `top_p` are a 422, `p` must be in [0.01, 0.99], a tool message must answer an
//! earlier call) and wants `Authorization: Bearer <key>`. The mock counts a token per word and
//! bills no template tokens (`usage.tokens` is 64 over `billed_units` on input), so every
//! count and cost below is exact.

use std::time::Duration;

use serde_json::{json, Value};
use tollgate_e2e::{eventually, Gateway, Mock, ProviderEnv, MOCK_COHERE_KEY};

const MASTER_KEY: &str = "sk-master-cohere";
/// USD per token: powers of two, so that every cost is exact in binary floating point.
const INPUT: f64 = 0.0009765625; // 2^-10
const OUTPUT: f64 = 0.001953125; // 2^-9

fn config(mock: &Mock) -> String {
    format!(
        "model_list:\n\
         - model_name: command\n\
         \x20 litellm_params:\n\
         \x20   model: cohere/command-a-03-2025\n\
         \x20   api_base: {url}\n\
         \x20   api_key: {MOCK_COHERE_KEY}\n\
         \x20   input_cost_per_token: {INPUT}\n\
         \x20   output_cost_per_token: {OUTPUT}\n\
         - model_name: command-chat\n\
         \x20 litellm_params:\n\
         \x20   model: cohere_chat/command-r-plus-08-2024\n\
         \x20   api_base: {url}/v2\n\
         \x20   api_key: {MOCK_COHERE_KEY}\n\
         - model_name: command-wrong-key\n\
         \x20 litellm_params:\n\
         \x20   model: cohere/command-a-03-2025\n\
         \x20   api_base: {url}\n\
         \x20   api_key: not-the-key\n\
         - model_name: command-no-key\n\
         \x20 litellm_params:\n\
         \x20   model: cohere/command-a-03-2025\n\
         \x20   api_base: {url}\n\
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

fn weather() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
            "required": ["location"]}}})
}

fn clock() -> Value {
    json!({"type": "function", "function": {"name": "get_time", "description": "Local time of a city"}})
}

const ARGUMENTS: &str = r#"{"location":"Paris","unit":"celsius"}"#;

fn buffered(env: &Env) {
    let (status, cost, body) = env.chat_with_cost(&json!({
        "model": "command", "user": "cohere-e2e-buffered",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello cohere"}],
        "temperature": 0.2, "top_p": 1, "max_tokens": 50
    }));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "command-a-03-2025");
    assert!(
        body["id"]
            .as_str()
            .unwrap()
            .starts_with("00000000-0000-4000-8000-"),
        "{body}"
    );
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: hello cohere"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    // "be brief" + "hello cohere" billed in (the mock's 64 template tokens are not billed),
    // "echo: hello cohere" out.
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 0}})
    );
    assert_eq!(cost, Some(4.0 * INPUT + 3.0 * OUTPUT));

    let upstream = env.upstream();
    assert_eq!(upstream["path"], "/v2/chat");
    assert_eq!(
        header(&upstream, "authorization"),
        Some(format!("Bearer {MOCK_COHERE_KEY}").as_str()),
        "the provider's key, never the client's gateway key"
    );
    // top_p 1 (OpenAI's "no cut") is Cohere's widest p; the mock refuses p = 1.
    assert_eq!(
        upstream["body"],
        json!({"model": "command-a-03-2025",
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello cohere"}],
            "max_tokens": 50, "temperature": 0.2, "p": 0.99})
    );

    // cohere_chat/ and a base that already ends in /v2: joined once.
    let (status, body) = env.chat(&json!({"model": "command-chat",
        "messages": [{"role": "user", "content": "joined once"}]}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "command-r-plus-08-2024");
    assert_eq!(env.upstream()["path"], "/v2/chat");

    // JSON mode with a schema: Cohere's json_object with the schema.
    let schema =
        json!({"type": "object", "properties": {"echo": {"type": "string"}}, "required": ["echo"]});
    let (status, body) = env.chat(&json!({"model": "command",
        "response_format": {"type": "json_schema", "json_schema": {"name": "echo", "schema": schema}},
        "messages": [{"role": "user", "content": "as json"}]}));
    assert_eq!(status, 200, "{body}");
    let content: Value =
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(content, json!({"echo": "as json"}));
    assert_eq!(
        env.upstream()["body"]["response_format"],
        json!({"type": "json_object", "json_schema": schema})
    );

    // A reply cut at max_completion_tokens says so; a stop sequence is a stop.
    let (_, body) = env.chat(&json!({"model": "command", "max_completion_tokens": 2,
        "messages": [{"role": "user", "content": "one two three"}]}));
    assert_eq!(body["choices"][0]["message"]["content"], "echo: one");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(env.upstream()["body"]["max_tokens"], 2);
    let (_, body) = env.chat(&json!({"model": "command", "stop": ["three"], "seed": 7,
        "frequency_penalty": 0.5, "presence_penalty": 0.25,
        "messages": [{"role": "user", "content": "one two three"}]}));
    assert_eq!(body["choices"][0]["message"]["content"], "echo: one two ");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let sent = &env.upstream()["body"];
    assert_eq!(sent["stop_sequences"], json!(["three"]));
    assert_eq!(
        (
            &sent["seed"],
            &sent["frequency_penalty"],
            &sent["presence_penalty"]
        ),
        (&json!(7), &json!(0.5), &json!(0.25))
    );
}

fn streamed(env: &Env) {
    let chunks = chunks_json(&env.stream(&json!({
        "model": "command", "stream": true, "stream_options": {"include_usage": true},
        "user": "cohere-e2e-stream", "messages": [{"role": "user", "content": "stream from cohere"}]
    })));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["model"], "command-a-03-2025");
    assert_eq!(streamed_text(&chunks), "echo: stream from cohere");
    let finishes: Vec<&Value> = chunks
        .iter()
        .map(|chunk| &chunk["choices"][0]["finish_reason"])
        .filter(|reason| !reason.is_null())
        .collect();
    assert_eq!(finishes, [&json!("stop")]);
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 0}, "cost": 3.0 * INPUT + 4.0 * OUTPUT})
    );
    let upstream = env.upstream();
    assert_eq!(upstream["path"], "/v2/chat");
    assert_eq!(
        upstream["body"],
        json!({"model": "command-a-03-2025", "stream": true,
            "messages": [{"role": "user", "content": "stream from cohere"}]})
    );

    // Without include_usage: no usage chunk; one chunk per streamed word.
    let chunks = chunks_json(&env.stream(&json!({"model": "command", "stream": true,
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

    // A generation Cohere ends with finish_reason ERROR reaches the client as one OpenAI
    // error event, no finish reason and no [DONE].
    let data = env.stream(&json!({"model": "command", "stream": true,
        "messages": [{"role": "user", "content": "break mock:stream_error"}]}));
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(
        last,
        json!({"error": {"message": "The upstream provider failed to generate the response: Cohere reported finish_reason ERROR: internal server error (mock:stream_error)",
            "type": "api_error", "param": null, "code": "upstream_generation_failed"}}),
        "{data:?}"
    );
    assert!(!data.iter().any(|event| event == "[DONE]"));
    assert!(!data
        .iter()
        .any(|event| event.contains("\"finish_reason\":\"")));
}

fn tool_round_trip(env: &Env) {
    let (status, body) = env.chat(&json!({"model": "command", "tools": [weather()],
        "user": "cohere-e2e-tools", "messages": [{"role": "user", "content": "weather in Paris?"}]}));
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    // Cohere's tool plan is the answer's text.
    assert_eq!(choice["message"]["content"], "I will call get_weather.");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], ARGUMENTS);
    let id = call["id"].as_str().unwrap();
    assert!(id.starts_with("get_weather_mock"), "{id}");
    // 3 words in; the plan's 4 and the arguments' one (no spaces in their JSON) out.
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    assert_eq!(body["usage"]["completion_tokens"], 5);
    assert_eq!(env.upstream()["body"]["tools"], json!([weather()]));

    // The result goes back as a tool message with the call's id, the plan as the
    // assistant message's tool_plan (the mock refuses a result no earlier call made).
    let (status, body) = env.chat(
        &json!({"model": "command", "tools": [weather()], "messages": [
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": "I will call get_weather.", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": id, "content": "18C and sunny"}
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: 18C and sunny"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    // The question, the plan and the result in.
    assert_eq!(body["usage"]["prompt_tokens"], 10);
    let messages = &env.upstream()["body"]["messages"];
    assert_eq!(
        messages[1],
        json!({"role": "assistant", "tool_plan": "I will call get_weather.", "tool_calls": [
            {"id": id, "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}]})
    );
    assert_eq!(
        messages[2],
        json!({"role": "tool", "tool_call_id": id, "content": [{"type": "text", "text": "18C and sunny"}]})
    );

    // Streamed, forced: the plan as text, then the call with its id, name and arguments.
    let chunks = chunks_json(&env.stream(&json!({"model": "command", "stream": true,
        "tools": [weather()], "tool_choice": "required", "messages": [{"role": "user", "content": "weather?"}]})));
    assert_eq!(streamed_text(&chunks), "I will call get_weather.");
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert!(calls[0]["id"]
        .as_str()
        .unwrap()
        .starts_with("get_weather_mock"));
    let arguments: String = calls
        .iter()
        .filter_map(|call| call["function"]["arguments"].as_str())
        .collect();
    assert_eq!(arguments, ARGUMENTS);
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
    assert_eq!(env.upstream()["body"]["tool_choice"], "REQUIRED");

    // A named function, which v2 cannot name: REQUIRED with that tool alone.
    let (status, body) = env.chat(&json!({"model": "command", "tools": [weather(), clock()],
        "tool_choice": {"type": "function", "function": {"name": "get_time"}},
        "messages": [{"role": "user", "content": "time in Paris?"}]}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_time"
    );
    let sent = &env.upstream()["body"];
    assert_eq!(sent["tool_choice"], "REQUIRED");
    assert_eq!(
        sent["tools"],
        json!([{"type": "function", "function": {"name": "get_time", "description": "Local time of a city",
            "parameters": {"type": "object", "properties": {}}}}])
    );

    // tool_choice none: Cohere's NONE, a text answer.
    let (status, body) = env.chat(
        &json!({"model": "command", "tools": [weather()], "tool_choice": "none",
        "messages": [{"role": "user", "content": "just talk"}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "echo: just talk");
    assert_eq!(env.upstream()["body"]["tool_choice"], "NONE");
}

fn images(env: &Env) {
    let (status, body) = env.chat(
        &json!({"model": "command", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/photos/cat.jpg", "detail": "low"}}
        ]}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "echo: what is this [images: 2]"
    );
    assert_eq!(
        env.upstream()["body"]["messages"][0]["content"],
        json!([{"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/photos/cat.jpg", "detail": "low"}}])
    );
}

fn errors(env: &Env) {
    let (status, body) = env.chat(
        &json!({"model": "command-wrong-key", "user": "cohere-e2e-errors",
        "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        body,
        json!({"error": {"message": "invalid api token", "type": "authentication_error",
            "param": null, "code": "invalid_api_key"}})
    );
    assert_eq!(
        header(&env.upstream(), "authorization"),
        Some("Bearer not-the-key")
    );

    let (status, body) = env
        .chat(&json!({"model": "command-no-key", "messages": [{"role": "user", "content": "x"}]}));
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["message"], "no api key supplied");
    assert_eq!(body["error"]["type"], "authentication_error");
    assert_eq!(header(&env.upstream(), "authorization"), None);

    let (status, body) = env.chat(
        &json!({"model": "command", "messages": [{"role": "user", "content": "mock:status=429"}]}),
    );
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");

    // 498, a deny-listed token, is an OpenAI client's 400 content policy refusal.
    let (status, body) = env.chat(
        &json!({"model": "command", "messages": [{"role": "user", "content": "mock:status=498"}]}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], "content_policy_violation");

    let (status, body) = env.chat(
        &json!({"model": "command", "messages": [{"role": "user", "content": "mock:raw_error"}]}),
    );
    assert_eq!(status, 500, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("upstream exploded"));

    // What Cohere cannot do is the gateway's 400, naming the field.
    let (status, body) = env.chat(&json!({"model": "command", "n": 2,
        "messages": [{"role": "user", "content": "x"}]}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "n");
}

fn usage_recorded(env: &Env) {
    let row_of = |row: &Value| {
        let tollgate = &row["metadata"]["tollgate"];
        (
            row["custom_llm_provider"].as_str().unwrap().to_string(),
            tollgate["http_status"].as_u64().unwrap(),
            tollgate["prompt_tokens"].as_u64(),
            tollgate["completion_tokens"].as_u64(),
            tollgate["stream"].as_bool().unwrap(),
            row["spend"].as_f64().unwrap(),
        )
    };
    let rows = env.logs("cohere-e2e-buffered", 1);
    assert_eq!(
        row_of(&rows[0]),
        (
            "cohere".into(),
            200,
            Some(4),
            Some(3),
            false,
            4.0 * INPUT + 3.0 * OUTPUT
        )
    );
    assert_eq!(rows[0]["model"], "command");
    let rows = env.logs("cohere-e2e-stream", 1);
    assert_eq!(
        row_of(&rows[0]),
        (
            "cohere".into(),
            200,
            Some(3),
            Some(4),
            true,
            3.0 * INPUT + 4.0 * OUTPUT
        )
    );
    let rows = env.logs("cohere-e2e-tools", 1);
    assert_eq!(
        row_of(&rows[0]),
        (
            "cohere".into(),
            200,
            Some(3),
            Some(5),
            false,
            3.0 * INPUT + 5.0 * OUTPUT
        )
    );
    // The refused key is recorded with its status, and no tokens.
    let rows = env.logs("cohere-e2e-errors", 1);
    assert_eq!(
        row_of(&rows[0]),
        ("cohere".into(), 401, None, None, false, 0.0)
    );
}

fn stats(env: &Env) {
    assert!(eventually(Duration::from_secs(5), || {
        env.gateway
            .prometheus()
            .is_ok_and(|text| text.contains(r#"model="command",provider="cohere",status="200""#))
    }));
    let prometheus = env.gateway.prometheus().unwrap();
    for line in [
        r#"model="command-chat",provider="cohere_chat",status="200""#,
        r#"model="command-wrong-key",provider="cohere",status="401""#,
    ] {
        assert!(prometheus.contains(line), "{line}\n{prometheus}");
    }
}

#[test]
fn cohere_end_to_end() {
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
