//! Per-request glue: reads what [`Exchange`] needs from Envoy through proxy-wasm host calls
//! and applies what it decides.

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType};
use tollgate_core::exchange::{Exchange, Host, RequestHeaders, Verdict};
use tollgate_core::ratelimit::{Admission, Need, RateHeaders};
use tollgate_core::{proto, RequestPlan};

use crate::header_map::HeaderPairs;
use crate::host;
use crate::root::VmShared;

const JSON_HEADERS: [(&str, &str); 1] = [("content-type", "application/json")];

/// The proxy-wasm side of [`Host`]. Keeps the client's request headers, read in one host
/// call, so the upstream header map can be written back in one call too: every host call
/// crosses the VM boundary.
struct WasmHost {
    request_headers: HeaderPairs,
    /// The VM's spend book (in its usage queue) is what budgets are checked against, its
    /// quota book what rate limits are.
    shared: Rc<RefCell<VmShared>>,
    /// This request's context id.
    context_id: u32,
}

impl Host for WasmHost {
    fn now_ms(&mut self) -> u64 {
        host::now_ms()
    }

    fn remove_request_header(&mut self, name: &str) {
        host::set_request_header(name, None);
    }

    fn send_json_response(&mut self, status: u16, headers: &[(&'static str, String)], body: &[u8]) {
        let mut all: Vec<(&str, &str)> = JSON_HEADERS.to_vec();
        all.extend(headers.iter().map(|(name, value)| (*name, value.as_str())));
        host::send_response(status, all, body);
    }

    fn request_body(&mut self, size: usize) -> Cow<'_, [u8]> {
        Cow::Owned(host::body(BufferType::HttpRequestBody, size))
    }

    // The whole map is written back at once, without the client's headers that must go.
    fn write_upstream_request(&mut self, plan: &RequestPlan, body_size: usize) {
        host::set_request_headers(plan.upstream_headers(&self.request_headers));
        if !plan.keeps_body {
            host::replace_body(BufferType::HttpRequestBody, body_size, &plan.body);
        }
    }

    fn remove_response_header(&mut self, name: &str) {
        host::set_response_header(name, None);
    }

    fn set_response_header(&mut self, name: &str, value: &str) {
        host::set_response_header(name, Some(value));
    }

    fn response_body(&mut self, size: usize) -> Cow<'_, [u8]> {
        Cow::Owned(host::body(BufferType::HttpResponseBody, size))
    }

    fn replace_response_body(&mut self, size: usize, body: &[u8]) {
        host::replace_body(BufferType::HttpResponseBody, size, body);
    }

    fn spend(&mut self, scope: proto::BudgetScope, id: &str, now_ms: u64) -> f64 {
        // Nothing else holds the VM's state while a request event runs (one thread per VM);
        // were it held, refusing on a guess would be worse than one unchecked request.
        self.shared
            .try_borrow()
            .map_or(0.0, |shared| shared.spend(scope, id, now_ms))
    }

    fn admit(&mut self, needs: &[Need], now_ms: u64) -> Admission {
        // As for spend: the VM's state is free while a request event runs.
        let Ok(mut shared) = self.shared.try_borrow_mut() else {
            return Admission::Admitted(RateHeaders::default());
        };
        let admission = shared.quota.admit(needs, now_ms);
        shared.send_quota_asks(Some(self.context_id));
        admission
    }
}

fn action(verdict: Verdict) -> Action {
    match verdict {
        Verdict::Continue => Action::Continue,
        Verdict::Pause => Action::Pause,
    }
}

/// A request's exchange and its host, shared with the root context while the request
/// waits for a rate-limit lease (the root resumes it when the lease comes).
pub struct HttpExchange {
    host: WasmHost,
    exchange: Exchange,
}

impl HttpExchange {
    /// The authority answered: whether the request must be resumed (it was admitted).
    /// The caller has made this request's context the effective one.
    pub fn on_quota(&mut self, _context_id: u32) -> bool {
        self.exchange.on_quota(&mut self.host) == Verdict::Continue
    }

    /// Whether it still waits for a lease.
    pub fn awaits_quota(&self) -> bool {
        self.exchange.awaits_quota()
    }
}

/// One HTTP request.
pub struct TollgateHttp {
    shared: Rc<RefCell<VmShared>>,
    context_id: u32,
    inner: Rc<RefCell<HttpExchange>>,
}

impl TollgateHttp {
    /// A context for a new request.
    pub fn new(shared: Rc<RefCell<VmShared>>, context_id: u32) -> Self {
        let attempts_route = shared.borrow().config.attempts_route;
        TollgateHttp {
            inner: Rc::new(RefCell::new(HttpExchange {
                host: WasmHost {
                    request_headers: HeaderPairs::default(),
                    shared: shared.clone(),
                    context_id,
                },
                exchange: Exchange::with_routing(crate::root::vm_routing(), attempts_route),
            })),
            shared,
            context_id,
        }
    }
}

impl Context for TollgateHttp {}

impl HttpContext for TollgateHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let all = host::request_headers();
        let state = self.shared.borrow().state.clone();
        let headers = RequestHeaders::scan(
            all.iter()
                .map(|(name, value)| (name.as_slice(), value.as_slice())),
        );
        let mut inner = self.inner.borrow_mut();
        let HttpExchange { host, exchange } = &mut *inner;
        let verdict = exchange.on_request_headers(host, state.as_ref(), &headers, end_of_stream);
        host.request_headers = all;
        action(verdict)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let verdict = {
            let mut inner = self.inner.borrow_mut();
            let HttpExchange { host, exchange } = &mut *inner;
            exchange.on_request_body(host, body_size, end_of_stream)
        };
        if self.inner.borrow().awaits_quota() {
            self.shared
                .borrow_mut()
                .wait_for_quota(self.context_id, &self.inner);
        }
        action(verdict)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let mut inner = self.inner.borrow_mut();
        let HttpExchange { host, exchange } = &mut *inner;
        if !exchange.is_upstream() {
            return Action::Continue;
        }
        let headers = host::response_headers();
        let header = |wanted: &str| {
            headers
                .iter()
                .find(|(name, _)| name.as_slice() == wanted.as_bytes())
                .and_then(|(_, value)| std::str::from_utf8(value).ok())
        };
        let status = header(":status").and_then(|value| value.parse::<u16>().ok());
        action(exchange.on_response_headers_with(
            host,
            status,
            header("content-type"),
            header("x-envoy-attempt-count"),
            end_of_stream,
        ))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let mut inner = self.inner.borrow_mut();
        let HttpExchange { host, exchange } = &mut *inner;
        action(exchange.on_response_body(host, body_size, end_of_stream))
    }

    fn on_log(&mut self) {
        let now_ms = host::now_ms();
        self.inner.borrow_mut().exchange.finish(now_ms);
        let inner = self.inner.borrow();
        let mut shared = self.shared.borrow_mut();
        if let Some(outcome) = inner.exchange.outcome(now_ms, &mut shared.record_ids) {
            shared.record_outcome(outcome);
            // Slots given back go to the authority at once.
            shared.send_quota_asks(Some(self.context_id));
        }
    }
}
