"""Spin's remote LLM protocol (`/infer`, `/embed`) against a running `tern serve`."""

import math


def test_infer_continues_the_prompt_and_counts_tokens(server, model_id):
    body = {"model": model_id, "prompt": "The king", "options": {"maxTokens": 12, "temperature": 0}}
    status, _, out = server.json("POST", "/infer", body)
    assert status == 200, out
    assert out["text"]
    assert out["usage"]["generatedTokenCount"] == 12
    assert out["usage"]["promptTokenCount"] >= 2
    # Greedy: the same answer twice.
    assert server.json("POST", "/infer", body)[2]["text"] == out["text"]


def test_embed_returns_unit_vectors_that_tell_inputs_apart(server, model_id):
    status, _, out = server.json("POST", "/embed", {"model": model_id, "input": ["The king", "O Romeo", "The king"]})
    assert status == 200, out
    a, b, c = out["embeddings"]
    for v in (a, b):
        assert abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-4
    assert a == c and a != b
    assert out["usage"]["promptTokenCount"] >= 6


def test_bad_spin_requests_are_400(server, model_id):
    for body in ({"prompt": "x"}, {"model": model_id, "prompt": "x", "options": {"topP": 7}}, {"model": model_id, "input": []}):
        path = "/embed" if "input" in body else "/infer"
        status, _, out = server.json("POST", path, body)
        assert status == 400, (path, body, out)
        assert out["error"]["message"]
