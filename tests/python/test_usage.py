"""Usage the filter counts reaches the control plane's ledger, streaming included."""

import hashlib
import sqlite3
import time

import openai

from conftest import MASTER_KEY


def wait_for_rows(database, marker_count, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(database) as connection:
            rows = connection.execute(
                "SELECT model_name, provider, status, prompt_tokens, completion_tokens, stream, key_hash"
                " FROM usage_records ORDER BY received_unix_ms"
            ).fetchall()
        if len(rows) >= marker_count or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_usage_records_reach_the_ledger(gateway):
    client = openai.OpenAI(base_url=gateway["url"] + "/v1", api_key=MASTER_KEY, max_retries=0)
    with sqlite3.connect(gateway["database"]) as connection:
        before = connection.execute("SELECT COUNT(*) FROM usage_records").fetchone()[0]
    client.chat.completions.create(model="claude-mock", messages=[{"role": "user", "content": "ledger one two"}])
    list(client.chat.completions.create(model="gpt-mock", stream=True,
                                        messages=[{"role": "user", "content": "ledger stream"}]))
    rows = wait_for_rows(gateway["database"], before + 2)
    new = rows[before:]
    assert len(new) >= 2, rows
    by_model = {(row[0], bool(row[5])): row for row in new}
    claude = by_model[("claude-mock", False)]
    assert claude[1] == "anthropic" and claude[2] == 200
    assert claude[3] > 0 and claude[4] > 0
    streamed = by_model[("gpt-mock", True)]
    # Tokens of a stream the client did not ask usage for are still counted.
    assert streamed[3] > 0 and streamed[4] > 0
    assert streamed[6] == hashlib.sha256(MASTER_KEY.encode()).hexdigest()
