//! Starting the control plane from a loaded config: shared by `serve`, `up` and tests.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::LoadedConfig;
use crate::pricing::{PriceCatalog, PriceFileError};
use crate::store::{redact_url, Store, StoreError};
use crate::sync::SyncHub;

/// Where the state goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A `sqlite:` or `postgres://` URL.
    Url(String),
    /// A SQLite file path (created if missing).
    SqliteFile(PathBuf),
}

impl Database {
    /// `--database-url` (which clap also fills from `DATABASE_URL`), else
    /// `general_settings.database_url`, else `fallback`.
    pub fn choose(flag_or_env: Option<&str>, config: Option<&str>, fallback: Database) -> Database {
        flag_or_env
            .filter(|url| !url.is_empty())
            .or(config)
            .map_or(fallback, |url| Database::Url(url.to_string()))
    }

    /// For logs: the URL without its password, or the file.
    pub fn describe(&self) -> String {
        match self {
            Database::Url(url) => redact_url(url),
            Database::SqliteFile(path) => format!("sqlite file {}", path.display()),
        }
    }

    /// Opens the store and applies migrations.
    pub async fn open(&self) -> Result<Store, StoreError> {
        match self {
            Database::Url(url) => Store::connect(url).await,
            Database::SqliteFile(path) => Store::connect_sqlite_file(path).await,
        }
    }
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database refused, or holds what cannot be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The operator's price file (`model_prices_file`) could not be loaded.
    #[error(transparent)]
    Prices(#[from] PriceFileError),
}

/// The price tables of `config`: the built-in one and the operator's file
/// (`general_settings.model_prices_file`), logged.
pub fn load_prices(config: &LoadedConfig) -> Result<PriceCatalog, PriceFileError> {
    let file = config.config.general.model_prices_file.as_deref();
    let catalog = PriceCatalog::load(file)?;
    match (file, catalog.user_table()) {
        (Some(path), Some(table)) => tracing::info!(
            "prices: the built-in table and {} models from {}",
            table.len(),
            path.display()
        ),
        _ => tracing::info!("prices: the built-in table"),
    }
    Ok(catalog)
}

/// The environment variable budget alerts are POSTed to (LiteLLM's name).
pub const ALERT_WEBHOOK_ENV: &str = "WEBHOOK_URL";

/// Checks that the stored provider keys open with the store's credential key (sealing the
/// clear ones of earlier versions), stores `config` (replacing the previous config rows) and
/// starts a hub serving a snapshot of the result with a version above every earlier one, so
/// filters still holding the previous run's snapshot take the new one when they reconnect.
/// Every snapshot is priced from the built-in table and the config's price file, which is
/// read first, so a bad file stops the start with nothing changed.
pub async fn start_control_plane(
    store: Store,
    config: &LoadedConfig,
) -> Result<Arc<SyncHub>, StartError> {
    let prices = Arc::new(load_prices(config)?);
    // Before the config is written: a wrong key must stop the start with nothing changed.
    let report = store.prepare_credentials().await?;
    match store.credential_key() {
        Some(key) => tracing::info!(
            sealed = report.sealed,
            migrated = report.migrated,
            "provider keys are encrypted at rest with the key from {}",
            key.source()
        ),
        None => tracing::info!(
            "neither {} nor {} is set: deployments with a provider key cannot be stored",
            crate::secrets::LITELLM_SALT_KEY,
            crate::secrets::TOLLGATE_SALT_KEY
        ),
    }
    if report.migrated > 0 {
        tracing::info!(
            "encrypted {} provider keys that an earlier version stored in clear",
            report.migrated
        );
    }
    store.replace_config(&config.config).await?;
    if let Some(retention_ms) = config.config.general.spend_logs_retention_ms {
        crate::retention::spawn(
            store.clone(),
            retention_ms,
            config.config.general.spend_logs_retention_interval_ms,
        );
    }
    let hub = SyncHub::start_priced(store, prices).await?;
    if config.config.general.alerting_webhook {
        match std::env::var(ALERT_WEBHOOK_ENV) {
            Ok(url) if !url.trim().is_empty() => hub.set_alert_webhook(url),
            _ => tracing::warn!(
                "general_settings.alerting lists webhook but {ALERT_WEBHOOK_ENV} is not set: no budget alerts are sent"
            ),
        }
    }
    // Changes committed by other replicas on the same database (PostgreSQL) reach this
    // one's filters too.
    hub.spawn_change_watcher();
    if let Some(interval_ms) = config.config.general.health_check_interval_ms {
        crate::health_checks::spawn(hub.clone(), std::time::Duration::from_millis(interval_ms));
    }
    let snapshot = hub.current();
    tracing::info!(
        version = snapshot.version,
        deployments = snapshot.deployments.len(),
        "snapshot ready"
    );
    Ok(hub)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_choice_order() {
        let fallback = Database::SqliteFile(PathBuf::from(".tollgate/tollgate.db"));
        assert_eq!(
            Database::choose(
                Some("sqlite://a.db"),
                Some("postgres://b"),
                fallback.clone()
            ),
            Database::Url("sqlite://a.db".into())
        );
        assert_eq!(
            Database::choose(None, Some("postgres://b"), fallback.clone()),
            Database::Url("postgres://b".into())
        );
        assert_eq!(Database::choose(Some(""), None, fallback.clone()), fallback);
        assert_eq!(Database::choose(None, None, fallback.clone()), fallback);
    }
}
