//! The buffered Anthropic -> OpenAI path (`ResponseHandler::on_complete_body` of a plan for
//! an Anthropic deployment) on an arbitrary status and body.
//!
//! Input: one byte picking the status from `STATUSES`, then the body. Checks:
//! - a success becomes a `chat.completion` with one choice, or, when the body is no
//!   Anthropic message, a 502 with an OpenAI error body;
//! - an error becomes an OpenAI error body, status kept;
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
    }) = run_buffered(ProviderKind::Anthropic, data)
    else {
        return;
    };
    assert!(plan.response.drops_content_length());
    let client = completed
        .body
        .expect("Anthropic bodies are always rewritten");
    match completed.status {
        Some(replaced) => {
            assert!((200..300).contains(&status), "an error status is kept");
            assert_eq!(replaced, 502);
            assert_openai_error(&client);
            assert!(!plan.response.usage().is_reported());
        }
        None if (200..300).contains(&status) => {
            let completion = json_object(&client);
            assert_eq!(completion["object"], "chat.completion");
            let choices = completion["choices"]
                .as_array()
                .expect("choices is an array");
            assert_eq!(choices.len(), 1);
            assert_eq!(choices[0]["message"]["role"], "assistant");
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
                    let cached = recorded.cached_prompt_tokens.unwrap_or(0);
                    assert_eq!(told["prompt_tokens_details"]["cached_tokens"], cached);
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
