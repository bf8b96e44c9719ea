"""The official SDK against Tollgate's rate limits: a spent limit is an `openai.RateLimitError`
whose response carries Retry-After and the x-ratelimit-* headers the SDK reads, and admitted
answers carry the remaining headers too."""

import json
import time
import urllib.request

import openai
import pytest

from conftest import MASTER_KEY


def generate_key(gateway, **fields):
    request = urllib.request.Request(
        gateway["url"] + "/key/generate",
        data=json.dumps(fields).encode(),
        headers={"authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["key"]


def wait_for_key(client):
    deadline = time.monotonic() + 10
    while True:
        try:
            client.models.list()
            return
        except openai.AuthenticationError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_a_spent_rpm_limit_is_a_rate_limit_error_with_its_headers(gateway):
    # Enough of the minute left for three requests to fall in one window.
    left = 60 - time.time() % 60
    if left < 10:
        time.sleep(left + 0.1)
    key = generate_key(gateway, key_alias="py-rpm", rpm_limit=2)
    client = openai.OpenAI(base_url=gateway["url"] + "/v1", api_key=key, max_retries=0)
    wait_for_key(client)
    messages = [{"role": "user", "content": "hi"}]
    remaining = []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(model="gpt-mock", messages=messages)
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
        remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
        assert raw.parse().choices[0].message.content == "echo: hi"
    assert remaining[-1] == 0
    with pytest.raises(openai.RateLimitError) as error:
        client.chat.completions.create(model="gpt-mock", messages=messages)
    assert error.value.status_code == 429
    assert error.value.code == "rate_limit_exceeded"
    assert error.value.type == "rate_limit_error"
    headers = error.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-limit-requests"] == "2"
