//! The module's filter configurations. Envoy makes one per listener that runs the filter (the
//! gateway's and the attempts listener's, from the same JSON) and a new one whenever a
//! listener is replaced, before the old one has drained. Configurations of the same bytes
//! share one [`Shared`]: one control-plane stream, one snapshot, one quota book, one usage
//! queue, for as long as any of them lives. Bytes that differ get a [`Shared`] of their own;
//! the one whose last configuration is destroyed stops its thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use tollgate_core::PluginConfig;

use crate::envoy::{self, Metrics, Scheduler};
use crate::shared::Shared;
use crate::sync;

/// What the module keeps for one of Envoy's filter configurations: the state it shares, and
/// what Envoy gave this configuration alone (stat ids, a scheduler).
pub struct FilterConfig {
    running: Arc<Running>,
    /// The stat ids Envoy defined for this configuration (histograms are recorded through
    /// a filter, with its own configuration's ids).
    pub metrics: Metrics,
    /// This configuration's number among its [`Shared`]'s flushers.
    id: u64,
}

/// A [`Shared`] whose control-plane thread runs while a configuration holds it: the last
/// one to go stops it.
struct Running(Arc<Shared>);

impl Drop for Running {
    fn drop(&mut self) {
        envoy::log_info(&format!(
            "tollgate: {}: its last filter configuration is gone; closing its control-plane stream",
            self.0.instance_id
        ));
        self.0.stop();
    }
}

/// The running [`Shared`]s by their configuration bytes. Weak: the configurations hold them.
type Registry = HashMap<Vec<u8>, Weak<Running>>;

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Numbers the filter configurations.
static NEXT_CONFIG: AtomicU64 = AtomicU64::new(1);

impl FilterConfig {
    /// The configuration Envoy is creating, from its bytes (the JSON [`PluginConfig`], empty
    /// for defaults): the running [`Shared`] of the same bytes, or a new one with its thread
    /// started. `None` (logged) when the JSON is invalid or the thread cannot start.
    pub fn new(envoy_config: envoy::Config, bytes: &[u8]) -> Option<Self> {
        let running = running(bytes)?;
        let id = NEXT_CONFIG.fetch_add(1, Ordering::Relaxed);
        running.0.attach_flusher(id, Scheduler::new(envoy_config));
        Some(FilterConfig {
            running,
            metrics: Metrics::define(envoy_config),
            id,
        })
    }

    /// The state this configuration shares.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.running.0
    }

    /// Envoy destroys the configuration: its scheduler goes now (another configuration of
    /// the same bytes flushes the counters from now on); the stream stops with the last one.
    pub fn destroy(self: Arc<Self>) {
        self.shared().detach_flusher(self.id);
    }
}

/// The running [`Shared`] for `bytes`, started if there is none.
fn running(bytes: &[u8]) -> Option<Arc<Running>> {
    // Envoy creates and destroys configurations on its main thread; the lock keeps a lookup
    // and the insert of a new one together all the same.
    let mut registry = registry();
    // Entries whose configurations are all gone.
    registry.retain(|_, running| running.strong_count() > 0);
    if let Some(running) = registry.get(bytes).and_then(Weak::upgrade) {
        envoy::log_info(&format!(
            "tollgate: another filter configuration shares the control-plane stream and snapshot of {}",
            running.0.instance_id
        ));
        return Some(running);
    }
    let config = match PluginConfig::parse(bytes) {
        Ok(config) => config,
        Err(error) => {
            envoy::log_error(&format!("tollgate: {error}"));
            return None;
        }
    };
    let shared = Arc::new(Shared::new(config));
    if let Err(error) = sync::spawn(shared.clone()) {
        envoy::log_error(&format!(
            "tollgate: cannot start the control-plane thread: {error}"
        ));
        shared.stop();
        return None;
    }
    let running = Arc::new(Running(shared));
    registry.insert(bytes.to_vec(), Arc::downgrade(&running));
    Some(running)
}
