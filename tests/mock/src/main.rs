//! `tollgate-mock --port N [--host 127.0.0.1] [--openai-key K] [--anthropic-key K]
//! [--azure-key K] [--gemini-key K] [--cohere-key K] [--ollama-key K] [--aws-access-key-id ID
//! --aws-secret-access-key S [--aws-session-token T]]... [--vertex-service-account FILE
//! [--vertex-token-ttl SECS]]`

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tollgate_mock::{serve, AwsCredentials, MockConfig};

/// Mock OpenAI Chat Completions, Anthropic Messages and Gemini provider for tests and benchmarks.
#[derive(Debug, Parser)]
#[command(name = "tollgate-mock", version)]
struct Args {
    /// Port to listen on; 0 picks a free one.
    #[arg(long)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Require `Authorization: Bearer <KEY>` on OpenAI endpoints.
    #[arg(long, env = "TOLLGATE_MOCK_OPENAI_KEY")]
    openai_key: Option<String>,
    /// Require `x-api-key: <KEY>` on Anthropic endpoints.
    #[arg(long, env = "TOLLGATE_MOCK_ANTHROPIC_KEY")]
    anthropic_key: Option<String>,
    /// Require `api-key: <KEY>` on Azure OpenAI endpoints.
    #[arg(long, env = "TOLLGATE_MOCK_AZURE_KEY")]
    azure_key: Option<String>,
    /// Require `x-goog-api-key: <KEY>` on Gemini endpoints.
    #[arg(long, env = "TOLLGATE_MOCK_GEMINI_KEY")]
    gemini_key: Option<String>,
    /// Require `Authorization: Bearer <KEY>` on Cohere's `/v2/chat`.
    #[arg(long, env = "TOLLGATE_MOCK_COHERE_KEY")]
    cohere_key: Option<String>,
    /// Require `Authorization: Bearer <KEY>` on Ollama's `/api/chat` (none by default, as
    /// Ollama takes none).
    #[arg(long, env = "TOLLGATE_MOCK_OLLAMA_KEY")]
    ollama_key: Option<String>,
    /// An AWS access key id Bedrock endpoints accept (repeat for several, each with its
    /// `--aws-secret-access-key`, in the same order).
    #[arg(long)]
    aws_access_key_id: Vec<String>,
    /// The secret of each `--aws-access-key-id`.
    #[arg(long)]
    aws_secret_access_key: Vec<String>,
    /// `ID=TOKEN`: the session token the temporary key ID must come with.
    #[arg(long)]
    aws_session_token: Vec<String>,
    /// A service account key file: `POST /token` exchanges its JWTs for the access tokens
    /// Vertex AI endpoints take.
    #[arg(long)]
    vertex_service_account: Option<std::path::PathBuf>,
    /// `expires_in` of the Vertex AI access tokens issued, in seconds.
    #[arg(long, default_value_t = 3600)]
    vertex_token_ttl: u64,
    /// Tokio worker threads (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = args.threads {
        runtime.worker_threads(n.max(1));
    }
    runtime
        .build()
        .context("building the tokio runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "tollgate-mock listening on http://{addr}")?;
        out.flush()?;
    }
    anyhow::ensure!(
        args.aws_access_key_id.len() == args.aws_secret_access_key.len(),
        "every --aws-access-key-id needs its --aws-secret-access-key"
    );
    let mut tokens = Vec::new();
    for pair in &args.aws_session_token {
        let (id, token) = pair
            .split_once('=')
            .context("--aws-session-token takes ID=TOKEN")?;
        tokens.push((id.to_string(), token.to_string()));
    }
    let aws_credentials = args
        .aws_access_key_id
        .iter()
        .zip(&args.aws_secret_access_key)
        .map(|(id, secret)| AwsCredentials {
            access_key_id: id.clone(),
            secret_access_key: secret.clone(),
            session_token: tokens
                .iter()
                .find(|(token_id, _)| token_id == id)
                .map(|(_, token)| token.clone()),
        })
        .collect();
    let vertex = match &args.vertex_service_account {
        Some(file) => {
            let json = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            Some(
                tollgate_mock::VertexAccount::from_key_file(
                    &json,
                    std::time::Duration::from_secs(args.vertex_token_ttl.max(1)),
                )
                .with_context(|| format!("reading the service account {}", file.display()))?,
            )
        }
        None => None,
    };
    let config = MockConfig {
        openai_api_key: args.openai_key,
        anthropic_api_key: args.anthropic_key,
        azure_api_key: args.azure_key,
        gemini_api_key: args.gemini_key,
        aws_credentials,
        cohere_api_key: args.cohere_key,
        ollama_api_key: args.ollama_key,
        vertex,
    };
    tokio::select! {
        res = serve(listener, config) => res,
        res = shutdown_signal() => res,
    }
}

#[cfg(unix)]
async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn shutdown_signal() -> anyhow::Result<()> {
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
}
