"""Usage the filter counts reaches the control plane's ledger, streaming included."""

import hashlib
import sqlite3
import time
import uuid

import openai

from conftest import MASTER_KEY


def wait_for_rows(database, end_user, count, timeout=10.0):
    """The ledger's records of requests sent with `user=end_user`, once there are `count`.

    Records of earlier tests may still be on their way (filters send usage in batches), so
    this test's records are told apart by the end user its requests name, not by position.
    """
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(database) as connection:
            rows = connection.execute(
                "SELECT model_name, provider, status, prompt_tokens, completion_tokens, stream, key_hash"
                " FROM usage_records WHERE end_user = ? ORDER BY received_unix_ms",
                (end_user,),
            ).fetchall()
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_usage_records_reach_the_ledger(gateway):
    client = openai.OpenAI(base_url=gateway["url"] + "/v1", api_key=MASTER_KEY, max_retries=0)
    marker = f"ledger-{uuid.uuid4()}"
    client.chat.completions.create(model="claude-mock", user=marker,
                                   messages=[{"role": "user", "content": "ledger one two"}])
    list(client.chat.completions.create(model="gpt-mock", stream=True, user=marker,
                                        messages=[{"role": "user", "content": "ledger stream"}]))
    list(client.chat.completions.create(model="bedrock-mock", stream=True, user=marker,
                                        messages=[{"role": "user", "content": "ledger bedrock stream"}]))
    rows = wait_for_rows(gateway["database"], marker, 3)
    assert len(rows) == 3, rows
    by_model = {(row[0], bool(row[5])): row for row in rows}
    claude = by_model[("claude-mock", False)]
    # The mock counts a token per word: 3 in ("ledger one two"), 4 out ("echo: ledger one two").
    assert claude[1:5] == ("anthropic", 200, 3, 4)
    streamed = by_model[("gpt-mock", True)]
    # Tokens of a stream the client did not ask usage for are still counted.
    assert streamed[1:5] == ("openai", 200, 2, 3)
    assert streamed[6] == hashlib.sha256(MASTER_KEY.encode()).hexdigest()
    # Bedrock's stream reports its usage in its last event (metadata): 3 in, 4 out.
    assert by_model[("bedrock-mock", True)][1:5] == ("bedrock", 200, 3, 4)
