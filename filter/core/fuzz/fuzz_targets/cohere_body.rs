//! The buffered Cohere -> OpenAI path (`ResponseHandler::on_complete_body` of a plan for a
//! Cohere deployment) on an arbitrary status and body.
//!
//! Input: one byte picking the status from `STATUSES`, then the body. Checks:
//! - a success becomes a `chat.completion` with one choice whose finish reason is OpenAI's, or
//!   a 502 with an OpenAI error body: `bad_upstream_response` when the body is no v2 chat
//!   response (nothing recorded), `upstream_generation_failed` when Cohere says `ERROR`;
//! - an error becomes an OpenAI error body, status kept but for 498 (a 400 to the client);
//! - the usage the client is told is the usage recorded;
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
    }) = run_buffered(ProviderKind::Cohere, data)
    else {
        return;
    };
    assert!(plan.response.drops_content_length());
    let client = completed.body.expect("Cohere bodies are always rewritten");
    let success = (200..300).contains(&status);
    match completed.status {
        Some(replaced) if success => {
            assert_eq!(replaced, 502);
            assert_openai_error(&client);
            let code = &json_object(&client)["error"]["code"];
            if code == "bad_upstream_response" {
                assert!(!plan.response.usage().is_reported());
            } else {
                assert_eq!(code, "upstream_generation_failed");
            }
        }
        Some(replaced) => {
            assert_eq!(
                (status, replaced),
                (498, 400),
                "only 498 changes its status"
            );
            assert_eq!(
                plan.response.status(),
                400,
                "the record says what the client got"
            );
            assert_openai_error(&client);
        }
        None if success => {
            let completion = json_object(&client);
            assert_eq!(completion["object"], "chat.completion");
            let choices = completion["choices"]
                .as_array()
                .expect("choices is an array");
            assert_eq!(choices.len(), 1);
            assert_eq!(choices[0]["message"]["role"], "assistant");
            let reason = choices[0]["finish_reason"].as_str().unwrap_or_default();
            assert!(
                ["stop", "length", "tool_calls"].contains(&reason),
                "finish_reason {reason}"
            );
            let calls = choices[0]["message"]["tool_calls"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            if !calls.is_empty() && reason != "length" {
                assert_eq!(reason, "tool_calls");
            }
            for call in calls {
                assert!(call["id"].as_str().is_some_and(|id| !id.is_empty()));
                assert!(call["function"]["arguments"].is_string());
            }
            assert!(completion["model"].is_string());
            // The client is told the usage that is recorded.
            let recorded = plan.response.usage();
            match completion.get("usage") {
                Some(told) => {
                    assert_eq!(told["prompt_tokens"], recorded.prompt_tokens.unwrap_or(0));
                    assert_eq!(
                        told["completion_tokens"],
                        recorded.completion_tokens.unwrap_or(0)
                    );
                    assert_eq!(told["prompt_tokens_details"]["cached_tokens"], 0);
                    assert!(told.get("completion_tokens_details").is_none());
                }
                None => assert_eq!(recorded, Default::default()),
            }
        }
        None => {
            assert_ne!(status, 498);
            assert_openai_error(&client);
            assert!(!plan.response.usage().is_reported());
        }
    }
});
