//! The floor under Tollgate's filter cost, for `make bench`.
//!
//! The plugin configuration string picks what the filter does, with no logic in between:
//! - `noop`: every callback returns Continue. What Envoy + V8 charge for running any Wasm
//!   HTTP filter at all (context creation, one VM call per callback, the log/done/delete
//!   calls).
//! - `body-routing`: the host calls a filter that routes on the request body cannot avoid:
//!   read the request headers in one call, hold them until the body is complete, read the
//!   body, set four headers (`:path`, `:authority`, `content-length`, a routing header) and
//!   write the body back, read `:status` and `content-type`, then hold a JSON response body
//!   until it is complete and read it, or read each chunk of an event stream as it passes.
//! - a comma-separated list of the steps above (`read-headers`, `hold-request`,
//!   `read-body`, `set-headers`, `set-header-map` (the same four headers, written with the
//!   rest of the map in one call), `set-body`, `read-response-headers`, `hold-response`,
//!   `read-response`), to find which step costs what.
//!
//! Tollgate's filter does all of `body-routing` plus its own work, so the difference between
//! the rows in BENCHMARKS.md is what Tollgate's logic and extra host calls cost.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(FloorRoot { steps: Steps::default() })
    });
}}

/// Which host calls the filter makes.
#[derive(Clone, Copy, Default)]
struct Steps {
    read_headers: bool,
    hold_request: bool,
    read_body: bool,
    set_headers: bool,
    set_header_map: bool,
    set_body: bool,
    read_response_headers: bool,
    hold_response: bool,
    read_response: bool,
}

impl Steps {
    fn parse(configuration: &str) -> Steps {
        let mut steps = Steps::default();
        for step in configuration.split(',').map(str::trim) {
            match step {
                "body-routing" => {
                    steps = Steps {
                        read_headers: true,
                        hold_request: true,
                        read_body: true,
                        set_headers: true,
                        set_header_map: false,
                        set_body: true,
                        read_response_headers: true,
                        hold_response: true,
                        read_response: true,
                    }
                }
                "read-headers" => steps.read_headers = true,
                "hold-request" => steps.hold_request = true,
                "read-body" => steps.read_body = true,
                "set-headers" => steps.set_headers = true,
                "set-header-map" => steps.set_header_map = true,
                "set-body" => steps.set_body = true,
                "read-response-headers" => steps.read_response_headers = true,
                "hold-response" => steps.hold_response = true,
                "read-response" => steps.read_response = true,
                _ => {}
            }
        }
        steps
    }
}

struct FloorRoot {
    steps: Steps,
}

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let configuration = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        self.steps = Steps::parse(&String::from_utf8_lossy(&configuration));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(FloorHttp {
            steps: self.steps,
            streaming_response: false,
            request_headers: Vec::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct FloorHttp {
    steps: Steps,
    streaming_response: bool,
    request_headers: Vec<(String, String)>,
}

impl Context for FloorHttp {}

impl HttpContext for FloorHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.steps.read_headers {
            self.request_headers =
                hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default();
        }
        if self.steps.hold_request && !end_of_stream {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.steps.hold_request && !end_of_stream {
            return Action::Pause;
        }
        if !end_of_stream {
            return Action::Continue;
        }
        let body = if self.steps.read_body {
            hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        if self.steps.set_headers {
            let length = body_size.to_string();
            for (name, value) in [
                (":path", "/v1/chat/completions"),
                (":authority", "upstream.example"),
                ("content-length", length.as_str()),
                ("x-floor-route", "upstream"),
            ] {
                let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
            }
        }
        if self.steps.set_header_map {
            let length = body_size.to_string();
            let mut headers: Vec<(&str, &str)> = self
                .request_headers
                .iter()
                .filter(|(name, _)| {
                    !matches!(name.as_str(), ":path" | ":authority" | "content-length")
                })
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect();
            headers.extend([
                (":path", "/v1/chat/completions"),
                (":authority", "upstream.example"),
                ("content-length", length.as_str()),
                ("x-floor-route", "upstream"),
            ]);
            let _ = hostcalls::set_map(MapType::HttpRequestHeaders, headers);
        }
        if self.steps.set_body && body.len() == body_size {
            let _ = hostcalls::set_buffer(BufferType::HttpRequestBody, 0, body_size, &body);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.steps.read_response_headers {
            let _status = hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status");
            let content_type =
                hostcalls::get_map_value(MapType::HttpResponseHeaders, "content-type");
            self.streaming_response = content_type
                .ok()
                .flatten()
                .is_some_and(|value| value.starts_with("text/event-stream"));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.steps.hold_response && !end_of_stream && !self.streaming_response {
            return Action::Pause;
        }
        if self.steps.read_response {
            let _body = hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size);
        }
        Action::Continue
    }
}
