"""The official `ollama` Python client against a running `tern serve`."""

import datetime
import json
import math

import ollama
import pytest

OPTIONS = {"num_predict": 12, "temperature": 0, "seed": 3}


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.base)


def assert_final_counts(last):
    assert last.done is True
    assert last.done_reason in ("stop", "length")
    assert last.eval_count > 0
    assert last.prompt_eval_count > 0
    assert last.total_duration > 0 and last.eval_duration > 0 and last.prompt_eval_duration > 0
    # Nanoseconds: a dozen tokens take far more than a microsecond.
    assert last.eval_duration > 1_000
    assert last.total_duration >= last.eval_duration


def test_generate_streams_fragments_then_counts(client, model_id):
    parts = list(client.generate(model=model_id, prompt="Once upon a time", options=OPTIONS, stream=True))
    assert len(parts) >= 2
    assert all(p.done is False for p in parts[:-1])
    assert "".join(p.response for p in parts).strip(), "no text streamed"
    assert parts[-1].response == ""
    assert_final_counts(parts[-1])
    assert parts[-1].eval_count <= 12


def test_generate_whole_and_raw(client, model_id):
    whole = client.generate(model=model_id, prompt="Once upon a time", options=OPTIONS)
    assert whole.response.strip()
    assert_final_counts(whole)
    raw = client.generate(model=model_id, prompt="Once upon a time", raw=True, options=OPTIONS)
    assert_final_counts(raw)
    assert raw.prompt_eval_count < whole.prompt_eval_count, "raw skips the chat template"


def test_chat_streamed_and_whole_agree_at_temperature_zero(client, model_id):
    messages = [{"role": "user", "content": "Tell me of the king."}]
    parts = list(client.chat(model=model_id, messages=messages, options=OPTIONS, stream=True))
    assert all(p.message.role == "assistant" for p in parts)
    assert_final_counts(parts[-1])
    whole = client.chat(model=model_id, messages=messages, options=OPTIONS)
    assert_final_counts(whole)
    assert whole.message.content == "".join(p.message.content for p in parts)


def test_empty_prompt_is_a_load(client, model_id):
    r = client.generate(model=model_id, prompt="")
    assert r.done is True and r.done_reason == "load"


def test_list_show_ps_and_version(client, server, model_id):
    models = client.list().models
    assert [m.model for m in models] == [model_id]
    m = models[0]
    assert m.size > 0 and m.digest and m.details.format == "gguf"
    assert m.modified_at.tzinfo is not None
    assert m.modified_at < datetime.datetime.now(datetime.timezone.utc)

    shown = client.show(model_id)
    arch = shown.modelinfo["general.architecture"]
    assert shown.modelinfo[f"{arch}.context_length"] > 0
    assert shown.modelinfo["general.parameter_count"] > 0
    assert shown.details.parameter_size
    assert "{{ .Prompt }}" in shown.template

    running = client.ps().models
    assert [r.model for r in running] == [model_id]
    assert running[0].size_vram == 0 and running[0].expires_at is not None

    status, _, body = server.json("GET", "/api/version")
    assert status == 200 and body["version"]


def test_embed_and_legacy_embeddings(client, model_id):
    r = client.embed(model=model_id, input=["The king is dead.", "Long live the king."])
    assert len(r.embeddings) == 2
    for vector in r.embeddings:
        assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-3)
    assert r.embeddings[0] != r.embeddings[1]
    assert r.prompt_eval_count > 0

    legacy = client.embeddings(model=model_id, prompt="The king is dead.")
    assert len(legacy.embedding) == len(r.embeddings[0])
    assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(legacy.embedding, r.embeddings[0]))


def test_errors_are_ollama_shaped(client, server, model_id):
    with pytest.raises(ollama.ResponseError) as missing:
        client.generate(model="no-such-model", prompt="hi")
    assert missing.value.status_code == 404
    assert "not found" in missing.value.error

    with pytest.raises(ollama.ResponseError) as bad:
        client.generate(model=model_id, prompt="hi", options={"temperature": "hot"})
    assert bad.value.status_code == 400

    status, headers, body = server.json("POST", "/api/chat", {"model": model_id, "messages": [], "format": "xml"})
    assert status == 400 and isinstance(body["error"], str)


def test_ndjson_framing_on_the_wire(server, model_id):
    status, headers, raw = server.request(
        "POST", "/api/generate", {"model": model_id, "prompt": "The king", "options": OPTIONS}
    )
    assert status == 200
    assert headers["content-type"] == "application/x-ndjson"
    assert raw.endswith(b"\n")
    lines = [json.loads(line) for line in raw.decode().split("\n")[:-1]]
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    last = lines[-1]
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration"):
        assert isinstance(last[key], int), key
    assert last["created_at"].endswith("Z")
