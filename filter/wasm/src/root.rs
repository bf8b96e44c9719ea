//! Per-VM root context: the control-plane stream, the current snapshot, usage batching and
//! the metric-id cache.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use prost::Message;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, MetricType};
use tollgate_core::proto::{self, control_message, filter_message};
use tollgate_core::{PluginConfig, State};

use crate::host;

/// Usage records kept while the control plane is unreachable; past this the oldest are
/// dropped (and counted), so an outage cannot grow a worker's memory without bound.
const MAX_QUEUED_USAGE: usize = 10_000;
/// Records per message on the stream.
const USAGE_BATCH: usize = 500;
/// How often the root context wakes up to flush usage and check the stream.
const TICK: Duration = Duration::from_millis(250);
/// Longest wait between reconnect attempts while the control plane is away.
const MAX_RECONNECT_DELAY_MS: u64 = 5_000;

/// What the root context shares with the HTTP contexts of its VM.
pub struct VmShared {
    /// Newest snapshot; `None` until the first arrives.
    pub state: Option<Rc<State>>,
    /// Static plugin configuration.
    pub config: PluginConfig,
    usage: VecDeque<proto::UsageRecord>,
    metric_ids: HashMap<String, u32>,
}

impl VmShared {
    /// Queues a usage record for the control plane.
    pub fn queue_usage(&mut self, record: proto::UsageRecord) {
        if self.usage.len() >= MAX_QUEUED_USAGE {
            self.usage.pop_front();
            self.count("tollgate.usage_records_dropped", 1);
        }
        self.usage.push_back(record);
    }

    fn metric(&mut self, kind: MetricType, name: &str) -> Option<u32> {
        if let Some(id) = self.metric_ids.get(name) {
            return Some(*id);
        }
        let id = host::define_metric(kind, name)?;
        self.metric_ids.insert(name.to_string(), id);
        Some(id)
    }

    /// Adds to a counter, defining it on first use.
    pub fn count(&mut self, name: &str, value: u64) {
        if value == 0 {
            return;
        }
        if let Some(id) = self.metric(MetricType::Counter, name) {
            host::increment_metric(id, value);
        }
    }

    /// Records a histogram sample, defining it on first use.
    pub fn observe(&mut self, name: &str, value: u64) {
        if let Some(id) = self.metric(MetricType::Histogram, name) {
            host::record_metric(id, value);
        }
    }
}

/// The root context of one VM.
pub struct TollgateRoot {
    context_id: u32,
    /// Tells this VM's stream apart from its siblings' (every VM's root context id is 1).
    vm_id: String,
    shared: Rc<RefCell<VmShared>>,
    stream: Option<u32>,
    /// Whether the stream has delivered a message since it was opened (a stream the host
    /// opens and the server refuses closes without one).
    stream_healthy: bool,
    /// Earliest time of the next reconnect attempt, and the current backoff.
    next_attempt_ms: u64,
    backoff_ms: u64,
}

impl TollgateRoot {
    /// A root context before configuration.
    pub fn new(context_id: u32) -> Self {
        TollgateRoot {
            context_id,
            vm_id: String::new(),
            shared: Rc::new(RefCell::new(VmShared {
                state: None,
                config: PluginConfig::default(),
                usage: VecDeque::new(),
                metric_ids: HashMap::new(),
            })),
            stream: None,
            stream_healthy: false,
            next_attempt_ms: 0,
            backoff_ms: 0,
        }
    }

    fn base_delay_ms(&self) -> u64 {
        self.shared.borrow().config.reconnect_ms.max(50)
    }

    fn connect(&mut self) {
        let now = host::now_ms();
        if now < self.next_attempt_ms {
            return;
        }
        // Exponential backoff, reset once a stream delivers a message.
        self.backoff_ms = if self.backoff_ms == 0 {
            self.base_delay_ms()
        } else {
            (self.backoff_ms * 2).min(MAX_RECONNECT_DELAY_MS)
        };
        self.next_attempt_ms = now + self.backoff_ms;
        let (cluster, hello) = {
            let shared = self.shared.borrow();
            let hello = proto::FilterMessage {
                kind: Some(filter_message::Kind::Hello(proto::Hello {
                    node_id: shared.config.node_id.clone(),
                    vm_id: self.vm_id.clone(),
                    snapshot_version: shared.state.as_ref().map_or(0, |state| state.version),
                    filter_version: env!("CARGO_PKG_VERSION").to_string(),
                })),
            };
            (
                shared.config.control_plane_cluster.clone(),
                hello.encode_to_vec(),
            )
        };
        let Some(token) = host::open_stream(&cluster) else {
            return;
        };
        if host::send_stream_message(token, &hello) {
            self.stream = Some(token);
            self.stream_healthy = false;
        }
    }

    fn flush_usage(&mut self) {
        let Some(token) = self.stream else { return };
        loop {
            let batch: Vec<proto::UsageRecord> = {
                let mut shared = self.shared.borrow_mut();
                let take = shared.usage.len().min(USAGE_BATCH);
                shared.usage.drain(..take).collect()
            };
            if batch.is_empty() {
                return;
            }
            let message = proto::FilterMessage {
                kind: Some(filter_message::Kind::Usage(proto::UsageBatch {
                    records: batch,
                })),
            };
            if !host::send_stream_message(token, &message.encode_to_vec()) {
                // Put the batch back in order; the next stream resends it (ids dedupe).
                if let Some(filter_message::Kind::Usage(batch)) = message.kind {
                    let mut shared = self.shared.borrow_mut();
                    for record in batch.records.into_iter().rev() {
                        shared.usage.push_front(record);
                    }
                }
                self.stream = None;
                return;
            }
        }
    }

    fn install(&mut self, message: &[u8]) {
        let control = match proto::ControlMessage::decode(message) {
            Ok(control) => control,
            Err(error) => {
                log::error!("tollgate: undecodable control-plane message: {error}");
                return;
            }
        };
        let Some(control_message::Kind::Snapshot(snapshot)) = control.kind else {
            return;
        };
        let (state, problems) = State::from_snapshot(snapshot);
        for problem in &problems {
            log::warn!("tollgate: snapshot {}: {problem}", state.version);
        }
        log::info!(
            "tollgate: vm {} installed snapshot {} ({} models)",
            self.vm_id,
            state.version,
            state.model_names().len()
        );
        let version = state.version;
        self.shared.borrow_mut().state = Some(Rc::new(state));
        if let Some(token) = self.stream {
            let ack = proto::FilterMessage {
                kind: Some(filter_message::Kind::Ack(proto::SnapshotAck { version })),
            };
            host::send_stream_message(token, &ack.encode_to_vec());
        }
    }
}

impl Context for TollgateRoot {
    fn on_grpc_stream_message(&mut self, token_id: u32, message_size: usize) {
        if self.stream != Some(token_id) {
            return;
        }
        if !self.stream_healthy {
            log::info!("tollgate: vm {} connected to the control plane", self.vm_id);
            self.stream_healthy = true;
            self.backoff_ms = 0;
            self.next_attempt_ms = 0;
        }
        if let Some(message) = host::grpc_message(message_size) {
            self.install(&message);
        }
    }

    fn on_grpc_stream_close(&mut self, token_id: u32, status_code: u32) {
        if self.stream == Some(token_id) {
            // Log the loss of a working stream once, not every failed retry during an outage.
            if self.stream_healthy {
                log::warn!(
                    "tollgate: vm {} lost the control-plane stream (grpc status {status_code}); serving the last snapshot and reconnecting",
                    self.vm_id
                );
            } else {
                log::debug!("tollgate: control-plane stream refused (grpc status {status_code})");
            }
            self.stream = None;
            self.stream_healthy = false;
        }
    }
}

impl RootContext for TollgateRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let config = match PluginConfig::parse(&host::plugin_configuration()) {
            Ok(config) => config,
            Err(error) => {
                log::error!("tollgate: {error}");
                return false;
            }
        };
        self.vm_id = format!(
            "{}-{:x}",
            self.context_id,
            host::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        self.shared.borrow_mut().config = config;
        host::set_tick_period(TICK);
        self.connect();
        true
    }

    fn on_tick(&mut self) {
        if self.stream.is_none() {
            self.connect();
        }
        self.flush_usage();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(crate::http::TollgateHttp::new(
            self.shared.clone(),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
