"""Starts the mock provider and `tollgate up` (control plane + real Envoy) once per session."""

import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("TOLLGATE_BIN_DIR", ROOT / "target" / "debug"))
WASM = Path(os.environ.get("TOLLGATE_WASM", ROOT / "target/wasm32-wasip1/release/tollgate_filter.wasm"))
NATIVE = Path(os.environ.get("TOLLGATE_NATIVE", ROOT / "target/release/libtollgate_native.so"))
# TOLLGATE_E2E_FILTER=native runs the gateway with the native module instead of the Wasm filter.
FILTER_ARGS = (["--native", str(NATIVE)] if os.environ.get("TOLLGATE_E2E_FILTER") == "native"
               else ["--wasm", str(WASM)])
MASTER_KEY = "sk-master-python"
OPENAI_KEY = "sk-mock-openai"
ANTHROPIC_KEY = "sk-mock-anthropic"
AZURE_KEY = "mock-azure-key"
GEMINI_KEY = "mock-gemini-key"
COHERE_KEY = "mock-cohere-key"
# Temporary AWS credentials the mock's Bedrock paths accept (it verifies SigV4 signatures).
AWS_ACCESS_KEY_ID = "ASIAMOCKPYTHON"
AWS_SECRET_ACCESS_KEY = "mock/python+bedrock-secret"
AWS_SESSION_TOKEN = "FwoGZXIvYXdzMockPythonToken=="
# The test-only service account the mock's Vertex AI token endpoint verifies JWTs against.
VERTEX_SERVICE_ACCOUNT = ROOT / "tests" / "data" / "vertex" / "service-account.json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_line(process: subprocess.Popen, needle: str, timeout: float, log: Path) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if needle in line:
            return line
        if not line and process.poll() is not None:
            break
    raise RuntimeError(f"no line with {needle!r}; log:\n{log.read_text() if log.exists() else ''}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(2)  # SIGINT: `tollgate up` stops Envoy too
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_vertex_token(url: str) -> None:
    """The control plane fetches Vertex AI tokens as it starts: waits until one reached Envoy."""
    import urllib.error
    import urllib.request

    body = json.dumps({"model": "vertex-gemini-mock", "messages": [{"role": "user", "content": "warm up"}]}).encode()
    deadline = time.monotonic() + 20
    while True:
        request = urllib.request.Request(f"{url}/v1/chat/completions", data=body, method="POST", headers={
            "authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10):
                return
        except urllib.error.HTTPError as error:
            if error.code != 503 or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


@pytest.fixture(scope="session")
def gateway():
    for path in (BIN_DIR / "tollgate", BIN_DIR / "tollgate-mock", WASM):
        if not path.exists():
            raise RuntimeError(f"{path} is missing: run `make test` (it builds everything first)")
    work = Path(tempfile.mkdtemp(prefix="tollgate-py-"))
    mock_log = work / "mock.log"
    mock = subprocess.Popen(
        [str(BIN_DIR / "tollgate-mock"), "--port", "0", "--openai-key", OPENAI_KEY, "--anthropic-key", ANTHROPIC_KEY,
         "--azure-key", AZURE_KEY, "--gemini-key", GEMINI_KEY, "--cohere-key", COHERE_KEY,
         "--aws-access-key-id", AWS_ACCESS_KEY_ID, "--aws-secret-access-key", AWS_SECRET_ACCESS_KEY,
         f"--aws-session-token={AWS_ACCESS_KEY_ID}={AWS_SESSION_TOKEN}",
         "--vertex-service-account", str(VERTEX_SERVICE_ACCOUNT)],
        stdout=subprocess.PIPE, stderr=mock_log.open("w"), text=True,
    )
    mock_url = wait_for_line(mock, "listening on", 20, mock_log).split()[-1].rstrip("/")
    # The key file the control plane reads (a path, as LiteLLM configs give it), its token
    # endpoint at the mock.
    vertex_credentials = work / "vertex-service-account.json"
    account = json.loads(VERTEX_SERVICE_ACCOUNT.read_text())
    account["token_uri"] = f"{mock_url}/token"
    vertex_credentials.write_text(json.dumps(account))
    config = work / "config.yaml"
    config.write_text(
        f"""general_settings:
  master_key: {MASTER_KEY}
model_list:
  - model_name: gpt-mock
    litellm_params:
      model: openai/mock-gpt-4o
      api_base: {mock_url}/v1
      api_key: {OPENAI_KEY}
  - model_name: claude-mock
    litellm_params:
      model: anthropic/claude-mock-sonnet
      api_base: {mock_url}
      api_key: os.environ/TOLLGATE_TEST_ANTHROPIC_KEY
  - model_name: azure-mock
    litellm_params:
      model: azure/gpt-4o-deployment
      api_base: {mock_url}
      api_version: "2024-10-21"
      api_key: {AZURE_KEY}
  - model_name: gemini-mock
    litellm_params:
      model: gemini/gemini-2.5-flash
      api_base: {mock_url}
      api_key: {GEMINI_KEY}
  - model_name: bedrock-mock
    litellm_params:
      model: bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0
      api_base: {mock_url}
      aws_region_name: us-west-2
      aws_access_key_id: {AWS_ACCESS_KEY_ID}
      aws_secret_access_key: {AWS_SECRET_ACCESS_KEY}
      aws_session_token: {AWS_SESSION_TOKEN}
  - model_name: bedrock-wrong-secret
    litellm_params:
      model: bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0
      api_base: {mock_url}
      aws_region_name: us-west-2
      aws_access_key_id: {AWS_ACCESS_KEY_ID}
      aws_secret_access_key: not-the-secret
      aws_session_token: {AWS_SESSION_TOKEN}
  - model_name: cohere-mock
    litellm_params:
      model: cohere_chat/command-a-03-2025
      api_base: {mock_url}
      api_key: {COHERE_KEY}
  - model_name: ollama-mock
    litellm_params:
      model: ollama/llama3.2
      api_base: {mock_url}
  - model_name: vertex-gemini-mock
    litellm_params:
      model: vertex_ai/gemini-2.5-flash
      api_base: {mock_url}
      vertex_project: tollgate-python
      vertex_credentials: {vertex_credentials}
  - model_name: vertex-claude-mock
    litellm_params:
      model: vertex_ai/claude-sonnet-4@20250514
      api_base: {mock_url}
      vertex_project: tollgate-python
      vertex_location: us-east5
      vertex_credentials: {vertex_credentials}
  - model_name: emb-openai-mock
    litellm_params:
      model: openai/text-embedding-3-small
      api_base: {mock_url}/v1
      api_key: {OPENAI_KEY}
  - model_name: emb-azure-mock
    litellm_params:
      model: azure/my-embedding
      api_base: {mock_url}
      api_version: "2024-10-21"
      api_key: {AZURE_KEY}
  - model_name: emb-gemini-mock
    litellm_params:
      model: gemini/gemini-embedding-001
      api_base: {mock_url}
      api_key: {GEMINI_KEY}
  - model_name: emb-cohere-mock
    litellm_params:
      model: cohere/embed-v4.0
      api_base: {mock_url}
      api_key: {COHERE_KEY}
  - model_name: emb-vertex-mock
    litellm_params:
      model: vertex_ai/text-embedding-005
      api_base: {mock_url}
      vertex_project: tollgate-python
      vertex_credentials: {vertex_credentials}
  - model_name: emb-ollama-mock
    litellm_params:
      model: ollama/nomic-embed-text
      api_base: {mock_url}
"""
    )
    env = dict(os.environ, TOLLGATE_TEST_ANTHROPIC_KEY=ANTHROPIC_KEY)
    # Ports are picked free just before use; another process can take one in between, so
    # a failed start is retried with new ports (as the Rust harness does).
    for attempt in range(3):
        port = free_port()
        log = work / f"tollgate-{attempt}.log"
        up = subprocess.Popen(
            [str(BIN_DIR / "tollgate"), "up", "--config", str(config), "--host", "127.0.0.1",
             "--port", str(port), "--admin-port", str(free_port()), "--grpc-port", str(free_port()),
             "--http-port", str(free_port()), "--concurrency", "2",
             "--state-dir", str(work / "state"), *FILTER_ARGS],
            stdout=subprocess.PIPE, stderr=log.open("w"), text=True, cwd=work, env=env,
        )
        try:
            wait_for_line(up, "Tollgate is ready", 90, log)
            break
        except RuntimeError:
            stop(up)
            if attempt == 2:
                stop(mock)
                raise
    try:
        wait_for_vertex_token(f"http://127.0.0.1:{port}")
        yield {"url": f"http://127.0.0.1:{port}", "mock_url": mock_url, "database": work / "state" / "tollgate.db"}
    finally:
        stop(up)
        stop(mock)
