"""Bad input never crashes or 500s: every mistake is a JSON error and the server keeps serving."""

import pytest

ERROR_KEYS = {"message", "type", "param", "code"}


def assert_openai_error(status, body, want_status):
    assert status == want_status, body
    assert set(body["error"]) == ERROR_KEYS, body


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[]",
        b'{"messages": "hi", "model": "x"}',
        b'{"messages": [{"role": "user", "content": 5}], "model": "M"}',
        b'{"messages": [{"role": "user", "content": "hi"}], "model": "M", "temperature": "hot"}',
        b'{"messages": [{"role": "user", "content": "hi"}], "model": "M", "max_tokens": -1}',
        b'{"messages": [{"role": "user", "content": "hi"}], "model": "M", "max_tokens": 1.5}',
        b'{"messages": [], "model": "M"}',
        b'{"messages": [{"role": "user", "content": "hi"}], "model": "M", "n": 9}',
    ],
)
def test_malformed_requests_are_400_json(server, model_id, body):
    body = body.replace(b'"M"', f'"{model_id}"'.encode())
    status, _, raw = server.request("POST", "/v1/chat/completions", body)
    import json

    assert_openai_error(status, json.loads(raw), 400)


def test_negative_max_tokens_names_the_param(server, model_id):
    status, _, body = server.json(
        "POST",
        "/v1/chat/completions",
        {"model": model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1},
    )
    assert_openai_error(status, body, 400)
    assert body["error"]["param"] == "max_tokens"


def test_prompt_longer_than_context_is_400_with_both_counts(server, model_id):
    _, _, models = server.json("GET", "/v1/models")
    ctx = models["data"][0]["context_length"]
    long = "the king and the queen " * ctx
    status, _, body = server.json(
        "POST", "/v1/chat/completions", {"model": model_id, "messages": [{"role": "user", "content": long}]}
    )
    assert_openai_error(status, body, 400)
    assert body["error"]["code"] == "context_length_exceeded"
    assert str(ctx) in body["error"]["message"]
    numbers = [int(w) for w in body["error"]["message"].replace(",", " ").replace(".", " ").split() if w.isdigit()]
    assert any(n > ctx for n in numbers), body["error"]["message"]


def test_unknown_model_is_404(server):
    status, _, body = server.json(
        "POST", "/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert_openai_error(status, body, 404)


def test_unknown_route_and_wrong_method_are_json(server):
    status, _, body = server.json("GET", "/v2/nothing")
    assert_openai_error(status, body, 404)
    status, _, body = server.json("GET", "/v1/chat/completions")
    assert_openai_error(status, body, 405)


def test_server_still_healthy_after_bad_input(server):
    status, _, body = server.json("GET", "/health")
    assert status == 200 and body["status"] == "ok"
