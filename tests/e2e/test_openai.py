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


def test_what_the_engine_cannot_honour_is_a_400_naming_the_field(client, model_id):
    hi = [{"role": "user", "content": "What is the weather in Paris?"}]
    weather = {"type": "function", "function": {"name": "weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    cases = [
        ({"tools": [weather], "tool_choice": {"type": "function", "function": {"name": "w"}}}, "tool_choice.function.name"),
        ({"functions": [weather["function"]]}, "functions"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"42": -100}}, "logit_bias"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model=model_id, messages=hi, max_tokens=4, **extra)
        assert refused.value.param == param, (extra, refused.value.body)
    # Saying not to call the tools is honoured: they are not needed.
    answer = client.chat.completions.create(model=model_id, messages=hi, max_tokens=4, tools=[weather], tool_choice="none")
    assert answer.choices[0].message.tool_calls is None


def test_a_client_configured_without_v1_works_as_with_llama_server(server, model_id):
    bare = openai.OpenAI(base_url=server.base, api_key="unused", max_retries=0)
    assert [m.id for m in bare.models.list().data] == [model_id]
    answer = bare.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert bare.embeddings.create(model=model_id, input="Hi").data[0].embedding


def test_aliases_and_any_model_name_as_scripts_for_llama_server_expect(tmp_path):
    from conftest import BUNDLED, FIXTURE, Server

    model = [] if BUNDLED.exists() else ["--model", str(FIXTURE)]
    hi = [{"role": "user", "content": "Hi"}]
    s = Server([*model, "--alias", "gpt-4o-mini,llama"], tmp_path / "alias.log")
    try:
        c = openai.OpenAI(base_url=s.base + "/v1", api_key="unused", max_retries=0)
        ids = [m.id for m in c.models.list().data]
        assert ids[1:] == ["gpt-4o-mini", "llama"], ids
        answer = c.chat.completions.create(model="gpt-4o-mini", messages=hi, max_tokens=4, temperature=0)
        assert answer.model == "gpt-4o-mini"
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model="mistral", messages=hi, max_tokens=4)
    finally:
        s.stop()
    s = Server([*model, "--accept-any-model"], tmp_path / "any.log")
    try:
        c = openai.OpenAI(base_url=s.base + "/v1", api_key="unused", max_retries=0)
        answer = c.chat.completions.create(model="mistral", messages=hi, max_tokens=4)
        assert answer.choices[0].finish_reason in ("stop", "length")
    finally:
        s.stop()


def test_logprobs_whole_and_streamed_with_the_official_client(client, model_id):
    hi = [{"role": "user", "content": "Speak of the king."}]
    answer = client.chat.completions.create(model=model_id, messages=hi, max_tokens=8, temperature=0,
                                            logprobs=True, top_logprobs=3)
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert (t.token, t.logprob) == (t.top_logprobs[0].token, t.top_logprobs[0].logprob), "greedy: the likeliest"
    assert "".join(t.token for t in content) == answer.choices[0].message.content
    streamed = client.chat.completions.create(model=model_id, messages=hi, max_tokens=8, temperature=0,
                                              logprobs=True, stream=True)
    tokens = [t.token for chunk in streamed for c in chunk.choices if c.logprobs and c.logprobs.content
              for t in c.logprobs.content]
    assert tokens == [t.token for t in content]
    text = client.completions.create(model=model_id, prompt="The king", max_tokens=6, temperature=0, logprobs=2)
    lp = text.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert "".join(lp.tokens) == text.choices[0].text


def prefix_hits(server):
    _, _, text = server.request("GET", "/metrics", headers={"Accept": "text/plain"})
    line = next(l for l in text.decode().splitlines() if l.startswith("tern_prefix_cache_hits_total "))
    return float(line.split()[1])


def test_n_choices_share_the_prompts_kv_blocks(server, client, model_id):
    long = " ".join(f"word{i}" for i in range(120))
    before = prefix_hits(server)
    answer = client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": long}],
                                            max_tokens=6, temperature=1.0, seed=3, n=3)
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert all(c.finish_reason in ("stop", "length") for c in answer.choices)
    assert answer.usage.completion_tokens <= 18
    assert prefix_hits(server) - before >= 2, "choices 1 and 2 took the prompt blocks choice 0 computed"
    text = client.completions.create(model=model_id, prompt="The king", max_tokens=4, n=2, temperature=1.0)
    assert [c.index for c in text.choices] == [0, 1]


def test_n_choices_streamed_match_the_same_choices_whole(client, model_id):
    ask = dict(model=model_id, messages=[{"role": "user", "content": "Speak of the queen."}], max_tokens=12,
               temperature=1.0, seed=11, n=3)
    whole = client.chat.completions.create(**ask)
    texts, finishes, usage = ["", "", ""], [None] * 3, None
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **ask):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            finishes[c.index] = c.finish_reason or finishes[c.index]
        usage = chunk.usage or usage
    assert texts == [c.message.content for c in whole.choices], "choice i samples with seed + i either way"
    assert finishes == [c.finish_reason for c in whole.choices]
    assert usage.completion_tokens == whole.usage.completion_tokens
    streamed = client.completions.create(model=model_id, prompt="The king", max_tokens=5, n=2, seed=2,
                                         temperature=1.0, stream=True)
    parts = ["", ""]
    for chunk in streamed:
        for c in chunk.choices:
            parts[c.index] += c.text
    again = client.completions.create(model=model_id, prompt="The king", max_tokens=5, n=2, seed=2, temperature=1.0)
    assert parts == [c.text for c in again.choices]
