//! The buffered Ollama -> OpenAI path (`ResponseHandler::on_complete_body` of a plan for an
//! Ollama deployment) on an arbitrary status and body.
//!
//! Input: one byte picking the status from `STATUSES`, then the body. Checks:
//! - a success becomes a `chat.completion` with one choice whose finish reason is OpenAI's,
//!   or, when the body is no Ollama chat response (or Ollama's error object), a 502 with an
//!   OpenAI error body;
//! - an error becomes an OpenAI error body with the provider's status kept; Ollama's
//!   `{"error": "<text>"}` keeps its text;
//! - tool call arguments are JSON texts and every tool call has an id;
//! - the usage the client is told is the usage recorded, and a count Ollama left out is
//!   recorded as not reported (never as 0);
//! - the client always gets a JSON object; content-length is always dropped.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_core::proto::ProviderKind;
use tollgate_core_fuzz::{assert_openai_error, json_object, run_buffered, Buffered};

/// The counts of the body read with a generic JSON parser: what the usage record must say;
/// `None` when the body is no JSON object (serde also reads a struct from an array).
fn reference_counts(body: &[u8]) -> Option<(Option<u64>, Option<u64>)> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value.is_object().then(|| {
        (
            value["prompt_eval_count"].as_u64(),
            value["eval_count"].as_u64(),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(Buffered {
        status,
        body,
        plan,
        completed,
    }) = run_buffered(ProviderKind::Ollama, data)
    else {
        return;
    };
    assert!(plan.response.drops_content_length());
    let client = completed.body.expect("Ollama bodies are always rewritten");
    let success = (200..300).contains(&status);
    let recorded = plan.response.usage();
    match completed.status {
        Some(replaced) => {
            assert!(success, "an error's status is kept");
            assert_eq!(replaced, 502);
            assert_openai_error(&client);
            assert!(!recorded.is_reported());
        }
        None if success => {
            let completion = json_object(&client);
            assert_eq!(completion["object"], "chat.completion");
            assert!(completion["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("chatcmpl-")));
            let choices = completion["choices"]
                .as_array()
                .expect("choices is an array");
            assert_eq!(choices.len(), 1);
            let choice = &choices[0];
            assert_eq!(choice["message"]["role"], "assistant");
            let calls = choice["message"]["tool_calls"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let reason = choice["finish_reason"].as_str().expect("a finish reason");
            match reason {
                "tool_calls" => assert!(!calls.is_empty()),
                "stop" => assert!(calls.is_empty()),
                "length" => {}
                other => panic!("finish reason {other}"),
            }
            for call in calls {
                assert!(call["id"].as_str().is_some_and(|id| !id.is_empty()));
                let arguments = call["function"]["arguments"]
                    .as_str()
                    .expect("arguments are a string");
                // Ollama's object, compacted: still JSON text (by its grammar: a lone
                // surrogate escape Ollama sent stays, though serde would refuse to decode it).
                if arguments.starts_with('{') {
                    let raw: &serde_json::value::RawValue =
                        serde_json::from_str(arguments).expect("arguments are JSON");
                    assert_eq!(raw.get(), arguments);
                }
            }
            // The record is what Ollama counted, a count left out not reported.
            if let Some((prompt, completion_count)) = reference_counts(body) {
                assert_eq!(recorded.prompt_tokens, prompt);
                assert_eq!(recorded.completion_tokens, completion_count);
            }
            match completion.get("usage") {
                Some(told) => {
                    assert_eq!(told["prompt_tokens"], recorded.prompt_tokens.unwrap_or(0));
                    assert_eq!(
                        told["completion_tokens"],
                        recorded.completion_tokens.unwrap_or(0)
                    );
                }
                None => assert!(!recorded.is_reported()),
            }
        }
        None => {
            assert_openai_error(&client);
            assert!(!recorded.is_reported());
            let error = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|value| value.get("error").cloned());
            if let Some(Value::String(message)) = error {
                assert_eq!(json_object(&client)["error"]["message"], message.as_str());
            }
        }
    }
});
