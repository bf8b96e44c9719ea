"""The official openai SDK's legacy text completions (`client.completions.create`) against the
gateway: passed through to OpenAI's endpoint (gpt-mock) and translated through Anthropic's chat
(claude-mock), buffered and streamed, with exact usage."""

import openai
import pytest

from conftest import MASTER_KEY


@pytest.fixture(scope="module")
def client(gateway):
    return openai.OpenAI(base_url=gateway["url"] + "/v1", api_key=MASTER_KEY, max_retries=0)


@pytest.mark.parametrize("model", ["gpt-mock", "claude-mock"])
def test_completion(client, model):
    completion = client.completions.create(model=model, prompt="hello from python", max_tokens=10)
    assert completion.object == "text_completion"
    assert len(completion.choices) == 1
    assert completion.choices[0].text == "echo: hello from python"
    assert completion.choices[0].index == 0
    assert completion.choices[0].finish_reason == "stop"
    # The mocks count a token per word: 3 in, 4 out.
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens,
            completion.usage.total_tokens) == (3, 4, 7)


@pytest.mark.parametrize("model", ["gpt-mock", "claude-mock"])
def test_completion_stream(client, model):
    chunks = list(client.completions.create(model=model, prompt="stream this text", stream=True,
                                            stream_options={"include_usage": True}))
    assert all(chunk.object == "text_completion" for chunk in chunks)
    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert text == "echo: stream this text"
    finished = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finished[-1] == "stop"
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (3, 4, 7)


def test_completion_stream_without_usage(client):
    chunks = list(client.completions.create(model="claude-mock", prompt="no usage please", stream=True))
    assert "".join(chunk.choices[0].text for chunk in chunks) == "echo: no usage please"
    assert all(chunk.choices for chunk in chunks), "no usage chunk unless asked"


def test_translated_provider_refuses_what_chat_cannot_say(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="claude-mock", prompt="x", echo=True)
    assert refused.value.status_code == 400
    assert refused.value.body["param"] == "echo"
