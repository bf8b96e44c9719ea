"""`client.embeddings.create` of the official OpenAI SDK through the gateway, to every provider
the gateway embeds with. The SDK asks for base64 unless told otherwise and decodes it itself,
so these tests check the gateway's base64 (little-endian f32) as the SDK reads it.

The mock's vectors are a function of the text (tests/mock/src/embeddings.rs, reimplemented in
`vector` below), multiples of 1/256 and so exact in f32; it counts a token per word (Gemini's
batch embed counts none): every value below is exact.
"""

import sqlite3
import time
import uuid

import openai
import pytest

from conftest import MASTER_KEY

TEXTS = ["hello world", "embeddings are vectors"]

# (model, upstream model in the answer, tokens the provider counts for TEXTS, ledger provider)
PROVIDERS = [
    ("emb-openai-mock", "text-embedding-3-small", 5, "openai"),
    ("emb-azure-mock", "my-embedding", 5, "azure"),
    ("emb-gemini-mock", "gemini-embedding-001", None, "gemini"),
    ("emb-cohere-mock", "embed-v4.0", 5, "cohere"),
    ("emb-ollama-mock", "nomic-embed-text", 5, "ollama"),
    ("emb-vertex-mock", "text-embedding-005", 5, "vertex_ai"),
]


def vector(text, dimensions):
    weighted = sum(byte * (at + 1) for at, byte in enumerate(text.encode()))
    return [((weighted + 37 * i) % 512) / 256 - 1 for i in range(dimensions)]


def client(gateway):
    return openai.OpenAI(base_url=gateway["url"] + "/v1", api_key=MASTER_KEY, max_retries=0)


def ledger(database, end_user, timeout=10.0):
    """The ledger's record of the request sent with `user=end_user`, once it is there."""
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(database) as connection:
            rows = connection.execute(
                "SELECT model_name, provider, status, prompt_tokens, completion_tokens"
                " FROM usage_records WHERE end_user = ?",
                (end_user,),
            ).fetchall()
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def dimensions_of(model):
    # Cohere takes 256, 512, 1024 or 1536 dimensions; the others any size.
    return 256 if model == "emb-cohere-mock" else 4


@pytest.mark.parametrize("model,upstream_model,tokens,provider", PROVIDERS)
def test_sdk_default_base64_is_decoded_to_the_exact_vectors(gateway, model, upstream_model, tokens, provider):
    dimensions = dimensions_of(model)
    marker = f"emb-{uuid.uuid4()}"
    # No encoding_format: the SDK sends base64 and decodes it.
    response = client(gateway).embeddings.create(model=model, input=TEXTS, dimensions=dimensions, user=marker)
    assert [item.index for item in response.data] == [0, 1]
    assert [item.embedding for item in response.data] == [vector(text, dimensions) for text in TEXTS]
    assert response.model == upstream_model
    if tokens is None:
        assert response.usage is None
    else:
        assert (response.usage.prompt_tokens, response.usage.total_tokens) == (tokens, tokens)
    assert ledger(gateway["database"], marker) == [
        (model, provider, 200, tokens, None if tokens is None else 0)
    ]


@pytest.mark.parametrize("model,upstream_model,tokens,provider", PROVIDERS)
def test_float_vectors(gateway, model, upstream_model, tokens, provider):
    dimensions = dimensions_of(model)
    response = client(gateway).embeddings.create(
        model=model, input="hello world", dimensions=dimensions, encoding_format="float"
    )
    assert len(response.data) == 1
    assert response.data[0].embedding == vector("hello world", dimensions)
    assert response.data[0].object == "embedding"
    assert response.object == "list"


def test_token_ids_reach_openai_and_are_refused_for_gemini(gateway):
    response = client(gateway).embeddings.create(model="emb-openai-mock", input=[[1, 2, 3], [4]])
    assert (response.usage.prompt_tokens, len(response.data)) == (4, 2)
    with pytest.raises(openai.BadRequestError) as refused:
        client(gateway).embeddings.create(model="emb-gemini-mock", input=[1, 2, 3])
    assert refused.value.body["message"] == (
        "Gemini embeds text only: send 'input' as a string or an array of strings, not token ids."
    )
    assert refused.value.body["param"] == "input"


def test_empty_input_and_chat_models_are_refused(gateway):
    with pytest.raises(openai.BadRequestError) as refused:
        client(gateway).embeddings.create(model="emb-openai-mock", input="")
    assert refused.value.body["message"] == "'input' must not be an empty string."
    with pytest.raises(openai.BadRequestError) as refused:
        client(gateway).embeddings.create(model="claude-mock", input="hi")
    assert refused.value.body["message"] == (
        "Model `claude-mock` (provider anthropic) cannot serve embeddings: "
        "Anthropic has no embeddings API; use an embedding model of another provider."
    )
    with pytest.raises(openai.NotFoundError):
        client(gateway).embeddings.create(model="no-such-embedding-model", input="hi")
