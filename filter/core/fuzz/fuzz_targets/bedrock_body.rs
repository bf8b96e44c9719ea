//! The buffered Bedrock Converse -> OpenAI path (`ResponseHandler::on_complete_body` of a
//! plan for a Bedrock deployment, signed as every Bedrock request is) on an arbitrary status
//! and body.
//!
//! Input: one byte picking the status from `STATUSES`, then the body. Checks:
//! - a success becomes a `chat.completion` with one choice, or, when the body is no Converse
//!   answer, a 502 with an OpenAI error body;
//! - an error becomes an OpenAI error body, status kept, with the message of Bedrock's
//!   `{"message": ...}` when the body has one;
//! - the usage the client is told is the usage recorded;
//! - the client always gets a JSON object; content-length is always dropped.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tollgate_core::proto::ProviderKind;
use tollgate_core_fuzz::{assert_openai_error, json_object, run_buffered, Buffered};

fuzz_target!(|data: &[u8]| {
    let Some(Buffered {
        status,
        body,
        plan,
        completed,
    }) = run_buffered(ProviderKind::Bedrock, data)
    else {
        return;
    };
    assert!(plan.response.drops_content_length());
    let client = completed.body.expect("Bedrock bodies are always rewritten");
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
            assert_eq!(completion["model"], tollgate_core_fuzz::UPSTREAM_MODEL);
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
            // Bedrock's own message reaches the client as it was.
            let message = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|value| {
                    value
                        .get("message")
                        .and_then(Value::as_str)
                        .filter(|message| !message.is_empty())
                        .map(str::to_string)
                });
            if let Some(message) = message {
                assert_eq!(json_object(&client)["error"]["message"], message.as_str());
            }
        }
    }
});
