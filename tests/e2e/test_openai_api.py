"""OpenAI text completions and embeddings through the official `openai`
client, and llama.cpp server's native routes over plain HTTP, against a
running `tern serve`."""

import json
import math

import openai
import pytest


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="x", max_retries=0)


def test_models_list_names_the_served_model(client, model_id):
    assert [m.id for m in client.models.list().data] == [model_id]


def test_completion_continues_the_prompt(client, model_id):
    r = client.completions.create(model=model_id, prompt="Once upon a time", max_tokens=8, temperature=0)
    assert r.object == "text_completion"
    assert r.id.startswith("cmpl-")
    assert r.model == model_id
    choice = r.choices[0]
    assert choice.index == 0
    assert choice.finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 8
    assert r.usage.prompt_tokens > 2
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    if choice.finish_reason == "length":
        assert choice.text, "eight tokens of text"

    again = client.completions.create(model=model_id, prompt="Once upon a time", max_tokens=8, temperature=0)
    assert again.choices[0].text == choice.text, "greedy decoding repeats"
    echoed = client.completions.create(
        model=model_id, prompt="Once upon a time", max_tokens=8, temperature=0, echo=True
    )
    assert echoed.choices[0].text == "Once upon a time" + choice.text


def test_streamed_completion_has_text_finish_reason_and_usage(client, model_id):
    stream = client.completions.create(
        model=model_id,
        prompt="The king said",
        max_tokens=12,
        temperature=0.7,
        seed=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        assert chunk.object == "text_completion"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.text
            finish = choice.finish_reason or finish
    assert finish in ("stop", "length")
    assert usage is not None and 0 < usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if finish == "length":
        assert text


def test_completion_refuses_more_than_eight_choices(client, model_id):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=model_id, prompt="Hi", max_tokens=4, n=9)
    assert info.value.body["param"] == "n"


def test_embeddings_in_the_clients_default_base64(client, model_id):
    r = client.embeddings.create(model=model_id, input=["The king", "The queen"])
    assert r.object == "list" and r.model == model_id
    assert [d.index for d in r.data] == [0, 1]
    for d in r.data:
        assert math.isclose(math.sqrt(sum(x * x for x in d.embedding)), 1.0, rel_tol=1e-4)
    assert r.data[0].embedding != r.data[1].embedding
    assert r.usage.prompt_tokens == r.usage.total_tokens > 2


def test_embeddings_as_floats_are_unit_length_and_stable(client, model_id):
    first = client.embeddings.create(model=model_id, input="To be, or not to be", encoding_format="float")
    second = client.embeddings.create(model=model_id, input="To be, or not to be", encoding_format="float")
    vector = first.data[0].embedding
    assert len(vector) > 8
    assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-4)
    assert second.data[0].embedding == vector
    b64 = client.embeddings.create(model=model_id, input="To be, or not to be")
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(b64.data[0].embedding, vector))


def test_embeddings_refuse_empty_input(client, model_id):
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=model_id, input="", encoding_format="float")


def test_llama_completion(server):
    status, _, body = server.json("POST", "/completion", {"prompt": "Once upon a time", "n_predict": 8, "temperature": 0})
    assert status == 200, body
    assert body["stop"] is True
    assert body["stop_type"] in ("eos", "limit")
    assert 0 < body["tokens_predicted"] <= 8
    assert body["tokens_evaluated"] > 2
    timings = body["timings"]
    assert timings["predicted_n"] == body["tokens_predicted"]
    assert timings["prompt_n"] + timings["cache_n"] == body["tokens_evaluated"]
    if body["stop_type"] == "limit":
        assert body["tokens_predicted"] == 8


def test_llama_completion_stream(server):
    status, headers, raw = server.request(
        "POST", "/completion", {"prompt": "The king said", "n_predict": 10, "stream": True}
    )
    assert status == 200
    assert {k.lower(): v for k, v in headers.items()}["content-type"].startswith("text/event-stream")
    events = [json.loads(line[len("data: "):]) for line in raw.decode().splitlines() if line.startswith("data: ")]
    assert events, raw
    assert all(e["stop"] is False for e in events[:-1])
    last = events[-1]
    assert last["stop"] is True and "timings" in last
    assert 0 < last["tokens_predicted"] <= 10


def test_llama_n_probs_whole_and_streamed(server):
    ask = {"prompt": "The king said", "n_predict": 6, "temperature": 0, "n_probs": 3, "ignore_eos": True}
    status, _, body = server.json("POST", "/completion", ask)
    assert status == 200, body
    probs = body["completion_probabilities"]
    assert len(probs) == body["tokens_predicted"] == 6
    assert "".join(p["token"] for p in probs) == body["content"]
    for p in probs:
        assert p["logprob"] <= 0 and len(p["top_logprobs"]) == 3
        assert p["top_logprobs"][0]["id"] == p["id"], "greedy takes the likeliest"
        assert bytes(p["bytes"]).decode(errors="replace") == p["token"]
    status, _, raw = server.request("POST", "/completion", {**ask, "stream": True})
    events = [json.loads(line[len("data: "):]) for line in raw.decode().splitlines() if line.startswith("data: ")]
    streamed = [p for e in events for p in e.get("completion_probabilities", [])]
    assert [p["id"] for p in streamed] == [p["id"] for p in probs]
    status, _, body = server.json("POST", "/completion", {**ask, "n_probs": 21})
    assert status == 400 and body["error"]["code"] == 400


def test_llama_tokenize_detokenize_round_trip(server):
    text = "To be, or not to be"
    status, _, body = server.json("POST", "/tokenize", {"content": text})
    assert status == 200
    tokens = body["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    status, _, body = server.json("POST", "/detokenize", {"tokens": tokens})
    assert status == 200 and body["content"] == text
    status, _, body = server.json("POST", "/tokenize", {"content": text, "with_pieces": True})
    assert [t["id"] for t in body["tokens"]] == tokens
    assert "".join(t["piece"] for t in body["tokens"]) == text


def test_llama_errors_carry_a_numeric_code(server):
    status, _, body = server.json("POST", "/completion", {"prompt": "a", "n_predict": 0})
    assert status == 400
    assert body["error"]["code"] == 400 and body["error"]["type"] == "invalid_request_error"


def test_llama_props(server, model_id):
    status, _, body = server.json("GET", "/props")
    assert status == 200
    settings = body["default_generation_settings"]
    assert settings["model"] == model_id
    _, _, model = server.json("GET", f"/v1/models/{model_id}")
    assert settings["n_ctx"] == model["context_length"]
    assert body["total_slots"] >= 1
    assert body["build_info"]
