"""The official `openai` Python client against a running `tern serve`."""

import openai
import pytest


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0)


def test_models_lists_the_served_model(client, model_id):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids == [model_id]


def test_streamed_chat_completion_has_content_finish_reason_and_usage(client, model_id):
    stream = client.chat.completions.create(
        model=model_id,
        messages=[{"role": "user", "content": "Tell me of the king."}],
        max_tokens=24,
        temperature=0.8,
        seed=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage, roles = "", None, None, []
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert roles == ["assistant"]
    assert text.strip(), "no content streamed"
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens > 0
    assert usage.prompt_tokens > 5
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_non_streamed_chat_completion(client, model_id):
    r = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 8


def test_temperature_zero_is_reproducible(client, model_id):
    def once():
        r = client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "Speak"}], max_tokens=12, temperature=0
        )
        return r.choices[0].message.content

    assert once() == once()


def test_unknown_model_raises_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "model_not_found"
