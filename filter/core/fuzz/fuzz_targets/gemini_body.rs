//! The buffered Gemini -> OpenAI path (`ResponseHandler::on_complete_body` of a plan for a
//! Gemini deployment) on an arbitrary status and body.
//!
//! Input: one byte picking the status from `STATUSES`, then the body. Checks:
//! - a success becomes a `chat.completion` with one choice, or, when the body is no
//!   `GenerateContentResponse`, a 502 with an OpenAI error body;
//! - an error becomes an OpenAI error body, status kept, or 401 `authentication_error` for a
//!   key Gemini calls not valid;
//! - tool call arguments are JSON texts without the pretty-printing Gemini sends;
//! - the usage the client is told is the usage recorded, reasoning tokens included;
//! - the client always gets a JSON object; content-length is always dropped.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_core::proto::ProviderKind;
use tollgate_core_fuzz::{assert_openai_error, json_object, run_buffered, Buffered};

fuzz_target!(|data: &[u8]| {
    let Some(Buffered {
        status,
        plan,
        completed,
        ..
    }) = run_buffered(ProviderKind::Gemini, data)
    else {
        return;
    };
    assert!(plan.response.drops_content_length());
    let client = completed.body.expect("Gemini bodies are always rewritten");
    let success = (200..300).contains(&status);
    match completed.status {
        Some(replaced) if success => {
            assert_eq!(replaced, 502);
            assert_openai_error(&client);
            assert!(!plan.response.usage().is_reported());
        }
        Some(replaced) => {
            assert_eq!(
                replaced, 401,
                "only a refused key changes an error's status"
            );
            assert_eq!(
                plan.response.status(),
                401,
                "the record says what the client got"
            );
            assert_openai_error(&client);
            assert_eq!(
                json_object(&client)["error"]["type"],
                "authentication_error"
            );
        }
        None if success => {
            let completion = json_object(&client);
            assert_eq!(completion["object"], "chat.completion");
            let choices = completion["choices"]
                .as_array()
                .expect("choices is an array");
            assert_eq!(choices.len(), 1);
            assert_eq!(choices[0]["message"]["role"], "assistant");
            assert!(choices[0]["finish_reason"].is_string());
            assert!(completion["model"].is_string());
            // Tool call arguments are JSON texts of objects.
            for call in choices[0]["message"]["tool_calls"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let arguments = call["function"]["arguments"]
                    .as_str()
                    .expect("arguments are a string");
                // Compacted, not changed: still JSON text (by its grammar: a lone surrogate
                // escape Gemini sent stays, though serde would refuse to decode it), with no
                // whitespace between tokens.
                let raw: &serde_json::value::RawValue =
                    serde_json::from_str(arguments).expect("arguments are JSON");
                assert_eq!(raw.get(), arguments);
                assert!(!arguments.contains(['\n', '\r', '\t']), "{arguments}");
            }
            // The client is told the usage that is recorded.
            let recorded = plan.response.usage();
            match completion.get("usage") {
                Some(told) => {
                    assert_eq!(told["prompt_tokens"], recorded.prompt_tokens.unwrap_or(0));
                    assert_eq!(
                        told["completion_tokens"],
                        recorded.completion_tokens.unwrap_or(0)
                    );
                    let cached = recorded.cached_prompt_tokens.unwrap_or(0);
                    assert_eq!(told["prompt_tokens_details"]["cached_tokens"], cached);
                    match recorded.reasoning_tokens {
                        Some(reasoning) => assert_eq!(
                            told["completion_tokens_details"]["reasoning_tokens"],
                            reasoning
                        ),
                        None => assert!(told.get("completion_tokens_details").is_none()),
                    }
                }
                None => assert_eq!(recorded, Default::default()),
            }
        }
        None => {
            assert_openai_error(&client);
            assert!(!plan.response.usage().is_reported());
        }
    }
});
