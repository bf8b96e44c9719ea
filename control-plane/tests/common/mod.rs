//! Test helpers: throwaway SQLite files and PostgreSQL databases.
// Helpers of tests: a failure should stop the test loudly.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{AnyConnection, Connection, Executor, PgConnection, Row};
use tollgate::secrets::{CredentialKey, KeySource};
use tollgate::store::Store;

/// The secret the tests' credential key is derived from.
pub const TEST_SALT_KEY: &str = "tollgate-tests-salt-key";

/// The credential key of the tests, as if from `LITELLM_SALT_KEY`.
pub fn credential_key() -> CredentialKey {
    credential_key_of(TEST_SALT_KEY)
}

/// A credential key from `secret`, as if from `LITELLM_SALT_KEY`.
pub fn credential_key_of(secret: &str) -> CredentialKey {
    CredentialKey::derive(secret, KeySource::Env("LITELLM_SALT_KEY")).unwrap()
}

/// A store on `url` with the tests' credential key.
pub async fn connect(url: &str) -> Store {
    Store::connect(url)
        .await
        .unwrap()
        .with_credential_key(Some(credential_key()))
}

/// A connection to the database at `url` behind the store's back (an earlier version's rows,
/// tampering), through sqlx's driver-independent `Any` connection.
async fn raw_connection(url: &str) -> AnyConnection {
    sqlx::any::install_default_drivers();
    AnyConnection::connect(url).await.unwrap()
}

/// Runs `sql` on the database at `url`.
pub async fn raw_execute(url: &str, sql: &str) {
    let mut connection = raw_connection(url).await;
    connection.execute(sql).await.unwrap();
    connection.close().await.unwrap();
}

/// `(id, api_key)` of every deployment row, as stored.
pub async fn raw_api_keys(url: &str) -> Vec<(String, Option<String>)> {
    let mut connection = raw_connection(url).await;
    let rows = sqlx::query("SELECT id, api_key FROM deployments ORDER BY id")
        .fetch_all(&mut connection)
        .await
        .unwrap();
    connection.close().await.unwrap();
    rows.iter()
        .map(|row| (row.get("id"), row.get("api_key")))
        .collect()
}

/// `(id, provider_settings, provider_secret)` of every deployment row, as stored.
pub async fn raw_provider_settings(url: &str) -> Vec<(String, Option<String>, Option<String>)> {
    let mut connection = raw_connection(url).await;
    let rows =
        sqlx::query("SELECT id, provider_settings, provider_secret FROM deployments ORDER BY id")
            .fetch_all(&mut connection)
            .await
            .unwrap();
    connection.close().await.unwrap();
    rows.iter()
        .map(|row| {
            (
                row.get("id"),
                row.get("provider_settings"),
                row.get("provider_secret"),
            )
        })
        .collect()
}

/// PostgreSQL server the tests use; CI has one, so an unreachable server fails the tests.
pub fn pg_base_url() -> String {
    std::env::var("TOLLGATE_TEST_PG_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// `base` with its database name replaced.
fn with_database(base: &str, database: &str) -> String {
    let (without_query, query) = match base.split_once('?') {
        Some((url, query)) => (url, format!("?{query}")),
        None => (base, String::new()),
    };
    let scheme_end = without_query.find("://").map_or(0, |i| i + 3);
    let path_start = without_query[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end);
    let authority = match path_start {
        Some(start) => &without_query[..start],
        None => without_query,
    };
    format!("{authority}/{database}{query}")
}

/// A fresh PostgreSQL database, dropped (even after a failed assertion) when this is dropped.
pub struct PgTestDb {
    admin_url: String,
    name: String,
    /// URL of the new database.
    pub url: String,
}

impl PgTestDb {
    pub async fn create() -> PgTestDb {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let admin_url = pg_base_url();
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "PostgreSQL at {admin_url} is unreachable ({error}); set TOLLGATE_TEST_PG_URL"
                )
            });
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "tollgate_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos
        );
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        admin.close().await.unwrap();
        let url = with_database(&admin_url, &name);
        PgTestDb {
            admin_url,
            name,
            url,
        }
    }
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot block on async work: use a thread
        // with its own runtime.
        let handle = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ = admin
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                    let _ = admin.close().await;
                }
            });
        });
        let _ = handle.join();
    }
}

/// A store on a fresh SQLite file; keep the directory alive as long as the store.
pub async fn sqlite_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("tollgate.db").display()
    );
    (connect(&url).await, dir)
}

#[test]
fn database_name_replacement() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://u:p@h/test?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(
        with_database("postgres://h:5432", "x"),
        "postgres://h:5432/x"
    );
}

/// How long a fake filter waits for a control message.
const FILTER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// One fake filter VM on the FilterSync stream: the sending half of its stream, the control
/// messages it receives, and the snapshot they add up to.
pub struct FakeFilter {
    outbound: tokio::sync::mpsc::Sender<tollgate::proto::FilterMessage>,
    /// The control messages the filter receives.
    pub inbound: tonic::Streaming<tollgate::proto::ControlMessage>,
    /// Usage acknowledgements received while waiting for a snapshot, oldest first.
    usage_acks: std::collections::VecDeque<tollgate::proto::UsageAck>,
    /// Spend updates received while waiting for something else, oldest first.
    pub spend_updates: std::collections::VecDeque<tollgate::proto::SpendUpdate>,
    /// Quota grants received while waiting for something else, oldest first.
    pub quota_grants: std::collections::VecDeque<tollgate::proto::QuotaGrant>,
    /// Provider tokens received while waiting for something else, oldest first.
    pub provider_tokens: std::collections::VecDeque<tollgate::proto::ProviderTokens>,
    /// Deployment cooldowns received while waiting for something else, oldest first.
    pub cooldowns: std::collections::VecDeque<tollgate::proto::DeploymentCooldowns>,
    /// The snapshot the messages received add up to.
    pub held: Option<tollgate::proto::Snapshot>,
}

/// How a fake filter reaches the control plane: the token it presents and its TLS.
#[derive(Debug, Clone, Default)]
pub struct FilterConnection {
    /// Sent as the filter token when set.
    pub token: Option<String>,
    /// TLS (`https://`) when set.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

/// One snapshot message from the control plane, as a fake filter took it.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A full snapshot.
    Snapshot(tollgate::proto::Snapshot),
    /// A delta (already applied to [`FakeFilter::held`]).
    Delta(tollgate::proto::SnapshotDelta),
}

impl FakeFilter {
    /// Opens a stream to the control plane at `address`.
    pub async fn connect(address: std::net::SocketAddr) -> FakeFilter {
        Self::try_connect(address, &FilterConnection::default())
            .await
            .unwrap()
    }

    /// Opens a stream as `connection` says; the error names why the connection or the
    /// stream was refused.
    pub async fn try_connect(
        address: std::net::SocketAddr,
        connection: &FilterConnection,
    ) -> Result<FakeFilter, String> {
        let scheme = if connection.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut endpoint =
            tonic::transport::Endpoint::from_shared(format!("{scheme}://{address}")).unwrap();
        if let Some(tls) = &connection.tls {
            endpoint = endpoint.tls_config(tls.clone()).unwrap();
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|error| format!("connect: {error:?}"))?;
        let mut client = tollgate::proto::filter_sync_client::FilterSyncClient::new(channel)
            // Snapshots of many keys are larger than tonic's default limit (4 MiB).
            .max_decoding_message_size(usize::MAX);
        let (outbound, receiver) = tokio::sync::mpsc::channel(16);
        let mut request =
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
        if let Some(token) = &connection.token {
            request.metadata_mut().insert(
                tollgate::channel::FILTER_TOKEN_METADATA,
                token.parse().unwrap(),
            );
        }
        let inbound = client
            .sync(request)
            .await
            .map_err(|status| {
                // The status's message, then why the transport failed (a TLS alert).
                let cause = std::error::Error::source(&status)
                    .map(|cause| format!(": {}", tollgate::server::error_chain(cause)))
                    .unwrap_or_default();
                format!("{:?}: {}{cause}", status.code(), status.message())
            })?
            .into_inner();
        Ok(FakeFilter {
            outbound,
            inbound,
            usage_acks: std::collections::VecDeque::new(),
            spend_updates: std::collections::VecDeque::new(),
            quota_grants: std::collections::VecDeque::new(),
            provider_tokens: std::collections::VecDeque::new(),
            cooldowns: std::collections::VecDeque::new(),
            held: None,
        })
    }

    /// Sends one message on the stream.
    pub async fn send(&self, kind: tollgate::proto::filter_message::Kind) {
        self.outbound
            .send(tollgate::proto::FilterMessage { kind: Some(kind) })
            .await
            .unwrap();
    }

    /// Says hello as VM `vm` of node `node`, holding snapshot `held`.
    pub async fn hello(&self, node: &str, vm: &str, held: u64) {
        self.send(tollgate::proto::filter_message::Kind::Hello(
            tollgate::proto::Hello {
                node_id: node.into(),
                vm_id: vm.into(),
                snapshot_version: held,
                filter_version: "0.1.0-test".into(),
            },
        ))
        .await;
    }

    /// The next control message pushed on the stream.
    pub async fn next_message(&mut self) -> tollgate::proto::control_message::Kind {
        let message = tokio::time::timeout(FILTER_WAIT, self.inbound.message())
            .await
            .expect("no control message in time")
            .expect("stream failed")
            .expect("stream ended");
        message.kind.expect("empty control message")
    }

    /// Takes a control message as a filter would: a snapshot replaces [`Self::held`], a
    /// delta must apply onto the version held; a usage acknowledgement is kept for
    /// [`Self::next_usage_ack`].
    fn take(&mut self, kind: tollgate::proto::control_message::Kind) -> Option<Update> {
        use tollgate::proto::control_message::Kind;
        match kind {
            Kind::Snapshot(snapshot) => {
                self.held = Some(snapshot.clone());
                Some(Update::Snapshot(snapshot))
            }
            Kind::Delta(delta) => {
                let held = self.held.as_mut().expect("a delta before any snapshot");
                apply_delta(held, &delta);
                Some(Update::Delta(delta))
            }
            Kind::UsageAck(ack) => {
                self.usage_acks.push_back(ack);
                None
            }
            Kind::Spend(spend) => {
                self.spend_updates.push_back(spend);
                None
            }
            Kind::Quota(grant) => {
                self.quota_grants.push_back(grant);
                None
            }
            Kind::ProviderTokens(tokens) => {
                self.provider_tokens.push_back(tokens);
                None
            }
            Kind::Cooldowns(cooldowns) => {
                self.cooldowns.push_back(cooldowns);
                None
            }
        }
    }

    /// The next snapshot or delta pushed on the stream, applied to [`Self::held`].
    pub async fn next_update(&mut self) -> Update {
        loop {
            let kind = self.next_message().await;
            if let Some(update) = self.take(kind) {
                return update;
            }
        }
    }

    /// The snapshot held after the next snapshot or delta.
    pub async fn next_snapshot(&mut self) -> tollgate::proto::Snapshot {
        self.next_update().await;
        self.held.clone().unwrap()
    }

    /// The batch ids of the next usage acknowledgement (snapshots and deltas on the way are
    /// taken into [`Self::held`]).
    pub async fn next_usage_ack(&mut self) -> Vec<u64> {
        self.next_ack().await.batch_ids
    }

    /// The next usage acknowledgement, whole (with its ledger sequence).
    pub async fn next_ack(&mut self) -> tollgate::proto::UsageAck {
        loop {
            if let Some(ack) = self.usage_acks.pop_front() {
                return ack;
            }
            let kind = self.next_message().await;
            self.take(kind);
        }
    }

    /// Spend updates received until one satisfies `wanted` (that one is returned; those
    /// before it are dropped).
    pub async fn spend_update_where(
        &mut self,
        wanted: impl Fn(&tollgate::proto::SpendUpdate) -> bool,
    ) -> tollgate::proto::SpendUpdate {
        loop {
            while let Some(update) = self.spend_updates.pop_front() {
                if wanted(&update) {
                    return update;
                }
            }
            let kind = self.next_message().await;
            self.take(kind);
        }
    }

    /// Sends a quota request.
    pub async fn ask_quota(&self, request_id: u64, asks: Vec<tollgate::proto::QuotaAsk>) {
        self.send(tollgate::proto::filter_message::Kind::Quota(
            tollgate::proto::QuotaRequest { request_id, asks },
        ))
        .await;
    }

    /// The next quota grant (whatever else arrives on the way is taken as usual).
    pub async fn next_quota_grant(&mut self) -> tollgate::proto::QuotaGrant {
        loop {
            if let Some(grant) = self.quota_grants.pop_front() {
                return grant;
            }
            let kind = self.next_message().await;
            self.take(kind);
        }
    }

    /// The next provider tokens message (snapshots and deltas on the way are taken into
    /// [`Self::held`]).
    pub async fn next_provider_tokens(&mut self) -> tollgate::proto::ProviderTokens {
        loop {
            if let Some(tokens) = self.provider_tokens.pop_front() {
                return tokens;
            }
            let kind = self.next_message().await;
            self.take(kind);
        }
    }

    /// The next deployment cooldowns message (snapshots and deltas on the way are taken
    /// into [`Self::held`]).
    pub async fn next_cooldowns(&mut self) -> tollgate::proto::DeploymentCooldowns {
        loop {
            if let Some(cooldowns) = self.cooldowns.pop_front() {
                return cooldowns;
            }
            let kind = self.next_message().await;
            self.take(kind);
        }
    }

    /// Half-closes the stream (as a VM closing it does) and keeps the receiving half.
    pub fn close_sending(self) -> tonic::Streaming<tollgate::proto::ControlMessage> {
        self.inbound
    }

    /// Snapshots held until one satisfies `predicate`.
    pub async fn snapshot_where(
        &mut self,
        predicate: impl Fn(&tollgate::proto::Snapshot) -> bool,
    ) -> tollgate::proto::Snapshot {
        let deadline = std::time::Instant::now() + FILTER_WAIT;
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "no matching snapshot in time"
            );
            let snapshot = self.next_snapshot().await;
            if predicate(&snapshot) {
                return snapshot;
            }
        }
    }
}

/// Applies a delta as `api/proto/tollgate/v1/sync.proto` defines it, onto a snapshot whose
/// keys are in hash order (as the control plane sends them).
pub fn apply_delta(held: &mut tollgate::proto::Snapshot, delta: &tollgate::proto::SnapshotDelta) {
    assert_eq!(
        held.version, delta.base_version,
        "a delta onto another version"
    );
    held.version = delta.version;
    if let Some(settings) = &delta.settings {
        held.settings = Some(settings.clone());
    }
    held.deployments
        .retain(|d| !delta.removed_deployment_ids.contains(&d.id));
    for deployment in &delta.deployments {
        match held.deployments.iter_mut().find(|d| d.id == deployment.id) {
            Some(existing) => *existing = deployment.clone(),
            None => held.deployments.push(deployment.clone()),
        }
    }
    if !delta.deployment_order.is_empty() {
        let mut ordered = Vec::new();
        for id in &delta.deployment_order {
            let at = held.deployments.iter().position(|d| &d.id == id).unwrap();
            ordered.push(held.deployments.remove(at));
        }
        assert!(
            held.deployments.is_empty(),
            "the order leaves deployments out"
        );
        held.deployments = ordered;
    }
    let mut keys: std::collections::BTreeMap<String, tollgate::proto::VirtualKey> = held
        .keys
        .drain(..)
        .map(|key| (key.key_sha256.clone(), key))
        .collect();
    for hash in &delta.removed_key_sha256 {
        keys.remove(hash);
    }
    for key in &delta.keys {
        keys.insert(key.key_sha256.clone(), key.clone());
    }
    held.keys = keys.into_values().collect();
}

// ---------------------------------------------------------------------------------------
// A control plane on one database, for the tests that run each scenario on SQLite and on
// PostgreSQL.

/// The master key of [`CONFIG`] (and of the other test configs that name it).
pub const MASTER: &str = "sk-test-master";

/// A config with the master key and one model, `gpt`.
pub const CONFIG: &str = r#"
general_settings:
  master_key: sk-test-master
model_list:
  - model_name: gpt
    litellm_params:
      model: openai/gpt-4o
      api_key: sk-upstream-config
"#;

/// How long a stopping plane's servers may take to end.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `text` parsed as a config file (no environment).
pub fn load(text: &str) -> tollgate::config::LoadedConfig {
    tollgate::config::parse(text, "test-config.yaml", &|_| None).unwrap()
}

/// A database for one test: a SQLite file or a fresh PostgreSQL database.
pub enum Db {
    /// The directory is kept so the SQLite file lives as long as the test.
    Sqlite(tempfile::TempDir, String),
    /// Dropped (the database with it) at the end of the test.
    Postgres(PgTestDb),
}

impl Db {
    /// A fresh PostgreSQL database when `postgres`, a SQLite file otherwise.
    pub async fn new(postgres: bool) -> Db {
        if postgres {
            Db::Postgres(PgTestDb::create().await)
        } else {
            let dir = tempfile::tempdir().unwrap();
            let url = format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("tollgate.db").display()
            );
            Db::Sqlite(dir, url)
        }
    }

    /// The URL the store connects to.
    pub fn url(&self) -> &str {
        match self {
            Db::Sqlite(_, url) => url,
            Db::Postgres(db) => &db.url,
        }
    }

    /// `sqlite` or `postgres`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Db::Sqlite(..) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }
}

/// Makes two tests of `async fn scenario(db: Db)`: one on SQLite, one on PostgreSQL, on a
/// multi-threaded runtime of 4 workers unless `worker_threads = N` says otherwise.
// Test files that run nothing on both databases do not use it.
#[allow(unused_macros)]
macro_rules! on_both {
    ($scenario:ident, $sqlite:ident, $postgres:ident $(,)?) => {
        $crate::common::on_both!($scenario, $sqlite, $postgres, worker_threads = 4);
    };
    ($scenario:ident, $sqlite:ident, $postgres:ident, worker_threads = $threads:tt $(,)?) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = $threads)]
        async fn $sqlite() {
            $scenario($crate::common::Db::new(false).await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = $threads)]
        async fn $postgres() {
            $scenario($crate::common::Db::new(true).await).await;
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_both;

/// `message` with the master key as its bearer token.
pub fn authed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {MASTER}").parse().unwrap());
    request
}

/// A control plane: gRPC (FilterSync + Management) and HTTP on ephemeral ports.
pub struct Plane {
    /// The hub the servers share.
    pub hub: std::sync::Arc<tollgate::sync::SyncHub>,
    /// The plane's store.
    pub store: Store,
    /// Where gRPC listens.
    pub grpc: std::net::SocketAddr,
    /// Where HTTP listens.
    pub http: std::net::SocketAddr,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Plane {
    /// A plane on `config` (config file text), with the tests' credential key.
    pub async fn start(url: &str, config: &str) -> Plane {
        Self::start_loaded(url, &load(config)).await
    }

    /// A plane on a parsed config, with the tests' credential key.
    pub async fn start_loaded(url: &str, config: &tollgate::config::LoadedConfig) -> Plane {
        Self::start_with(url, config, Some(credential_key())).await
    }

    /// A plane on `config`, sealing provider keys with `key` (`None`: no credential key).
    pub async fn start_with(
        url: &str,
        config: &tollgate::config::LoadedConfig,
        key: Option<CredentialKey>,
    ) -> Plane {
        let store = Store::connect(url).await.unwrap().with_credential_key(key);
        let hub = tollgate::app::start_control_plane(store.clone(), config)
            .await
            .unwrap();
        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = grpc_listener.local_addr().unwrap();
        let http = http_listener.local_addr().unwrap();
        let (stop_grpc, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let grpc_task = tokio::spawn({
            let hub = hub.clone();
            async move {
                tollgate::server::serve(hub, grpc_listener, async {
                    let _ = grpc_stopped.await;
                })
                .await
                .unwrap();
            }
        });
        let http_task = tokio::spawn({
            let manager = tollgate::manage::Manager::new(hub.clone());
            async move {
                tollgate::http_api::serve(manager, http_listener, async {
                    let _ = http_stopped.await;
                })
                .await
                .unwrap();
            }
        });
        Plane {
            hub,
            store,
            grpc,
            http,
            stops: vec![stop_grpc, stop_http],
            tasks: vec![grpc_task, http_task],
        }
    }

    /// Stops both servers, waits for them to end, and closes the store.
    pub async fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        for task in self.tasks {
            tokio::time::timeout(STOP_WAIT, task)
                .await
                .expect("server did not stop")
                .unwrap();
        }
        self.store.close().await;
    }

    /// A client of the Management gRPC service.
    pub async fn grpc_client(
        &self,
    ) -> tollgate::proto::management_client::ManagementClient<tonic::transport::Channel> {
        tollgate::proto::management_client::ManagementClient::connect(format!(
            "http://{}",
            self.grpc
        ))
        .await
        .unwrap()
    }

    /// A POST with the master key: its status and JSON body.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let response = reqwest::Client::new()
            .post(format!("http://{}{path}", self.http))
            .bearer_auth(MASTER)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// Asserts a 200 to a POST and returns the body.
    pub async fn ok(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let (status, answer) = self.post(path, body.clone()).await;
        assert_eq!(status, 200, "POST {path} {body}: {answer}");
        answer
    }

    /// A GET with the master key: its status and JSON body (for the error cases).
    pub async fn get_status(&self, path: &str, query: &[(&str, &str)]) -> (u16, serde_json::Value) {
        let response = reqwest::Client::new()
            .get(format!("http://{}{path}", self.http))
            .bearer_auth(MASTER)
            .query(query)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// Asserts a 200 to a GET and returns the body.
    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> serde_json::Value {
        let (status, answer) = self.get_status(path, query).await;
        assert_eq!(status, 200, "GET {path} {query:?}: {answer}");
        answer
    }

    /// Asserts a 400 to a POST whose `param` is `param` and whose message names it.
    pub async fn bad(&self, path: &str, body: serde_json::Value, param: &str) {
        let (status, answer) = self.post(path, body.clone()).await;
        assert_eq!(status, 400, "POST {path} {body}: {answer}");
        assert_eq!(
            answer["error"]["param"], param,
            "POST {path} {body}: {answer}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(param),
            "{answer}"
        );
    }

    /// `(created_at, updated_at)` of the key whose hash is `token`.
    pub async fn key_ms(&self, token: &str) -> (i64, i64) {
        let row = self.store.key(token).await.unwrap().unwrap();
        (row.created_at, row.updated_at)
    }

    /// When the budget window of `scope`/`id` resets, as stored.
    pub async fn reset_at(&self, scope: &str, id: &str) -> Option<i64> {
        self.store.budget_reset_at(scope, id).await.unwrap()
    }
}
