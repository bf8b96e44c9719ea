"""The official openai Python SDK against the gateway: chat, stream, models, errors, tools."""

import json

import openai
import pytest

from conftest import MASTER_KEY


# One deployment per provider; Vertex AI's take the control plane's access tokens.
ALL_MODELS = ["gpt-mock", "claude-mock", "azure-mock", "gemini-mock", "bedrock-mock", "cohere-mock", "ollama-mock",
              "vertex-gemini-mock", "vertex-claude-mock"]


@pytest.fixture(scope="module")
def client(gateway):
    return openai.OpenAI(base_url=gateway["url"] + "/v1", api_key=MASTER_KEY, max_retries=0)


@pytest.mark.parametrize("model", ALL_MODELS)
def test_chat(client, model):
    completion = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello from python"}]
    )
    assert completion.choices[0].message.content == "echo: hello from python"
    assert completion.choices[0].finish_reason == "stop"
    # Every mock counts a token per word: "hello from python" in, "echo: hello from python" out.
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (3, 4, 7)


@pytest.mark.parametrize("model", ALL_MODELS)
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


@pytest.mark.parametrize("model", ALL_MODELS)
def test_stream_with_usage(client, model):
    stream = client.chat.completions.create(
        model=model, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "count my tokens"}],
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 4)


def test_models_list(client):
    assert [model.id for model in client.models.list()] == [
        "gpt-mock", "claude-mock", "azure-mock", "gemini-mock", "bedrock-mock", "bedrock-wrong-secret",
        "cohere-mock", "ollama-mock", "vertex-gemini-mock", "vertex-claude-mock",
        "emb-openai-mock", "emb-azure-mock", "emb-gemini-mock", "emb-cohere-mock", "emb-vertex-mock",
        "emb-ollama-mock"]


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


def test_tool_round_trip_through_gemini(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"location": {"type": "string"}}}}}]
    messages = [{"role": "user", "content": "weather in Paris?"}]
    completion = client.chat.completions.create(model="gemini-mock", tools=tools, messages=messages)
    assert completion.choices[0].finish_reason == "tool_calls"
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris", "unit": "celsius"}
    # The SDK sends the assistant message back as it got it; the mock refuses the turn if the
    # thought signature carried in the call's id does not come back with the call.
    messages += [completion.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}]
    answer = client.chat.completions.create(model="gemini-mock", tools=tools, messages=messages)
    assert answer.choices[0].message.content == "echo: 18C and sunny"
    assert answer.choices[0].finish_reason == "stop"


def test_gemini_usage_and_images(client):
    completion = client.chat.completions.create(model="gemini-mock", messages=[{"role": "user", "content": [
        {"type": "text", "text": "think about this mock:thoughts=4"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}])
    assert completion.choices[0].message.content == "echo: think about this mock:thoughts=4 [images: 1]"
    # 4 words in; 7 answer words and 4 thought tokens out.
    assert completion.usage.prompt_tokens == 4
    assert completion.usage.completion_tokens == 11
    assert completion.usage.completion_tokens_details.reasoning_tokens == 4
    stream = client.chat.completions.create(model="gemini-mock", stream=True, stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "count these words"}])
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: count these words"
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 4)


def test_gemini_errors_map_to_sdk_exceptions(client):
    with pytest.raises(openai.RateLimitError) as error:
        client.chat.completions.create(model="gemini-mock", messages=[{"role": "user", "content": "mock:status=429"}])
    assert error.value.code == "resource_exhausted"
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="gemini-mock", n=2, messages=[{"role": "user", "content": "x"}])
    assert error.value.param == "n"


def test_tool_round_trip_through_cohere(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"location": {"type": "string"}}}}}]
    messages = [{"role": "user", "content": "weather in Paris?"}]
    completion = client.chat.completions.create(model="cohere-mock", tools=tools, messages=messages)
    assert completion.choices[0].finish_reason == "tool_calls"
    # Cohere's tool plan is the answer's text, and goes back as the tool plan.
    assert completion.choices[0].message.content == "I will call get_weather."
    call = completion.choices[0].message.tool_calls[0]
    assert call.id.startswith("get_weather_mock")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris", "unit": "celsius"}
    # 3 words in; the plan's 4 and the arguments' one (no spaces in their JSON) out.
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 5)
    # The mock refuses a tool message that answers no call an earlier message made.
    messages += [completion.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}]
    answer = client.chat.completions.create(model="cohere-mock", tools=tools, messages=messages)
    assert answer.choices[0].message.content == "echo: 18C and sunny"
    assert answer.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(model="cohere-mock", tools=tools, tool_choice="required", stream=True,
                                            messages=[{"role": "user", "content": "weather?"}])
    chunks = list(stream)
    calls = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert calls[0].function.name == "get_weather"
    assert json.loads("".join(c.function.arguments or "" for c in calls)) == {"location": "Paris", "unit": "celsius"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_cohere_usage_and_images(client):
    completion = client.chat.completions.create(model="cohere-mock", temperature=0.5, top_p=1, max_tokens=20,
                                                messages=[{"role": "system", "content": "be brief"},
                                                          {"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}])
    assert completion.choices[0].message.content == "echo: what is this? [images: 1]"
    assert completion.model == "command-a-03-2025"
    # The billed units: 5 words in (the mock's 64 template tokens are not billed), 6 out.
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 6)
    stream = client.chat.completions.create(model="cohere-mock", stream=True, stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "count these words"}])
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: count these words"
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 4)
    completion = client.chat.completions.create(model="cohere-mock", response_format={"type": "json_object"},
                                                messages=[{"role": "user", "content": "as json"}])
    assert json.loads(completion.choices[0].message.content) == {"echo": "as json"}


def test_cohere_errors_map_to_sdk_exceptions(client):
    with pytest.raises(openai.RateLimitError) as error:
        client.chat.completions.create(model="cohere-mock", messages=[{"role": "user", "content": "mock:status=429"}])
    assert error.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="cohere-mock", messages=[{"role": "user", "content": "mock:status=498"}])
    assert error.value.code == "content_policy_violation"
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="cohere-mock", n=2, messages=[{"role": "user", "content": "x"}])
    assert error.value.param == "n"
    # A generation Cohere ends with ERROR mid-stream is an error event: the SDK raises.
    stream = client.chat.completions.create(model="cohere-mock", stream=True,
                                            messages=[{"role": "user", "content": "break mock:stream_error"}])
    with pytest.raises(openai.APIError) as error:
        list(stream)
    assert "finish_reason ERROR" in str(error.value)


def test_tool_round_trip_through_ollama(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"location": {"type": "string"}}}}}]
    messages = [{"role": "user", "content": "weather in Paris?"}]
    completion = client.chat.completions.create(model="ollama-mock", tools=tools, messages=messages)
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.choices[0].message.content is None
    call = completion.choices[0].message.tool_calls[0]
    # Ollama gave the call no id: the gateway made one.
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris", "unit": "celsius"}
    # 3 words in; the arguments' one word out.
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 1)
    # The SDK sends the call back with its arguments as a string: Ollama (and the mock) take
    # an object, and the result names the function it answers.
    messages += [completion.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}]
    answer = client.chat.completions.create(model="ollama-mock", tools=tools, messages=messages)
    assert answer.choices[0].message.content == "echo: 18C and sunny"
    assert answer.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(model="ollama-mock", tools=tools, stream=True,
                                            messages=[{"role": "user", "content": "weather?"}])
    chunks = list(stream)
    calls = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert calls[0].function.name == "get_weather"
    assert json.loads("".join(c.function.arguments or "" for c in calls)) == {"location": "Paris", "unit": "celsius"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_ollama_usage_images_and_options(client):
    completion = client.chat.completions.create(model="ollama-mock", temperature=0.5, max_tokens=20, seed=7,
                                                messages=[{"role": "system", "content": "be brief"},
                                                          {"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}])
    assert completion.choices[0].message.content == "echo: what is this? [images: 1]"
    assert completion.model == "llama3.2"
    # 5 words in, 6 out.
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 6)
    # Ollama streams NDJSON; the SDK reads server-sent events.
    stream = client.chat.completions.create(model="ollama-mock", stream=True, stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "count these words"}])
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: count these words"
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 4)
    completion = client.chat.completions.create(model="ollama-mock", response_format={"type": "json_object"},
                                                messages=[{"role": "user", "content": "as json"}])
    assert json.loads(completion.choices[0].message.content) == {"echo": "as json"}
    completion = client.chat.completions.create(model="ollama-mock", max_tokens=2,
                                                messages=[{"role": "user", "content": "one two three"}])
    assert completion.choices[0].message.content == "echo: one"
    assert completion.choices[0].finish_reason == "length"


def test_ollama_errors_map_to_sdk_exceptions(client):
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="ollama-mock", messages=[{"role": "user", "content": "mock:status=429"}])
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="ollama-mock", messages=[{"role": "user", "content": "mock:status=404"}])
    assert error.value.code == "model_not_found"
    assert "model 'llama3.2' not found" in str(error.value)
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="ollama-mock", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert error.value.param == "messages[0].content[0].image_url.url"
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="ollama-mock", n=2, messages=[{"role": "user", "content": "x"}])
    assert error.value.param == "n"
    # An error line mid-stream is an error event: the SDK raises.
    stream = client.chat.completions.create(model="ollama-mock", stream=True,
                                            messages=[{"role": "user", "content": "break mock:stream_error"}])
    with pytest.raises(openai.APIError) as error:
        list(stream)
    assert "an error was encountered while running the model" in str(error.value)


def test_bedrock_tool_round_trip_images_and_usage(client):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"location": {"type": "string"}}}}}]
    messages = [{"role": "user", "content": "weather in Paris?"}]
    completion = client.chat.completions.create(model="bedrock-mock", tools=tools, messages=messages)
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.choices[0].message.content == "Let me check."
    call = completion.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name) == ("tooluse_mock_1", "get_weather")
    assert json.loads(call.function.arguments) == {"location": "Paris", "unit": "celsius"}
    # 3 words in; "Let me check." and the arguments' one word out.
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 4)
    messages += [completion.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"}]
    answer = client.chat.completions.create(model="bedrock-mock", tools=tools, messages=messages)
    assert answer.choices[0].message.content == "echo: 18C and sunny"
    assert answer.choices[0].finish_reason == "stop"
    completion = client.chat.completions.create(model="bedrock-mock", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}])
    assert completion.choices[0].message.content == "echo: what is this? [images: 1]"
    stream = client.chat.completions.create(model="bedrock-mock", stream=True, stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "count these words"}])
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: count these words"
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 4)


def test_bedrock_errors_map_to_sdk_exceptions(client):
    # The mock recomputes the SigV4 signature with the real secret: Bedrock's 403.
    with pytest.raises(openai.PermissionDeniedError) as error:
        client.chat.completions.create(model="bedrock-wrong-secret", messages=[{"role": "user", "content": "x"}])
    assert error.value.status_code == 403
    assert error.value.code == "invalid_api_key"
    assert error.value.type == "authentication_error"
    with pytest.raises(openai.RateLimitError) as error:
        client.chat.completions.create(model="bedrock-mock", messages=[{"role": "user", "content": "mock:status=429"}])
    assert error.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="bedrock-mock", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert error.value.param == "messages[0].content[0].image_url.url"


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
