//! The HTTP client behind the `tollgate models|keys|teams|users` commands.

use serde_json::Value;

/// A client of the management HTTP API (on the gateway port, or the control plane's).
pub struct Client {
    base: String,
    master_key: Option<String>,
    http: reqwest::Client,
}

/// Why a call failed: the API's message (with its status) or a transport error.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an error.
    #[error("{status}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// `error.message` of the answer (or its body).
        message: String,
    },
    /// No answer.
    #[error("cannot reach {url}: {source}")]
    Transport {
        /// The URL.
        url: String,
        /// The error.
        source: reqwest::Error,
    },
}

impl Client {
    /// A client of the API at `base` (`http://127.0.0.1:4000`).
    pub fn new(base: &str, master_key: Option<String>) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            master_key,
            http: reqwest::Client::new(),
        }
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: String,
    ) -> Result<Value, ClientError> {
        let request = match &self.master_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        };
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.clone(),
                source,
            })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|source| ClientError::Transport { url, source })?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        if status.is_success() {
            Ok(body)
        } else {
            let message = body
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map_or(text, str::to_string);
            Err(ClientError::Api {
                status: status.as_u16(),
                message,
            })
        }
    }

    /// `GET path?query`.
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.get(&url).query(query), url).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.post(&url).json(body), url).await
    }
}
