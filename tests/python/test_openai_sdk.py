"""The official openai Python SDK against the gateway: chat, stream, models, errors, tools."""

import json

import openai
import pytest

from conftest import MASTER_KEY


@pytest.fixture(scope="module")
def client(gateway):
    return openai.OpenAI(base_url=gateway["url"] + "/v1", api_key=MASTER_KEY, max_retries=0)


@pytest.mark.parametrize("model", ["gpt-mock", "claude-mock", "azure-mock"])
def test_chat(client, model):
    completion = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello from python"}]
    )
    assert completion.choices[0].message.content == "echo: hello from python"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


@pytest.mark.parametrize("model", ["gpt-mock", "claude-mock", "azure-mock"])
def test_stream(client, model):
    stream = client.chat.completions.create(
        model=model, stream=True, messages=[{"role": "user", "content": "stream this text"}]
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: stream this text"
    assert chunks[-1].choices[0].finish_reason == "stop"
    # The client did not ask for usage: the chunk the gateway forced upstream is removed.
    assert all(c.choices for c in chunks)


@pytest.mark.parametrize("model", ["gpt-mock", "claude-mock", "azure-mock"])
def test_stream_with_usage(client, model):
    stream = client.chat.completions.create(
        model=model, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "count my tokens"}],
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens > 0


def test_models_list(client):
    assert [model.id for model in client.models.list()] == ["gpt-mock", "claude-mock", "azure-mock"]


def test_tool_call_through_anthropic(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"location": {"type": "string"}}}}}]
    completion = client.chat.completions.create(
        model="claude-mock", tools=tools, messages=[{"role": "user", "content": "weather in Paris?"}]
    )
    call = completion.choices[0].message.tool_calls[0]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["location"] == "Paris"


def test_errors_map_to_sdk_exceptions(gateway, client):
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert error.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway["url"] + "/v1", api_key="sk-wrong", max_retries=0).models.list()
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-mock", messages=[{"role": "user", "content": "mock:status=429"}])
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="gpt-mock", messages="not a list")
    assert error.value.param == "messages"
