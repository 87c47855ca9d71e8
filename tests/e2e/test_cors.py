"""CORS end to end: `--cors-origin` lets a browser origin call the API, and
the default server sends no CORS headers at all."""

import pytest

from conftest import BUNDLED, FIXTURE, Server

ORIGIN = "http://example.test"


def lower(headers):
    return {k.lower(): v for k, v in headers.items()}


@pytest.fixture(scope="module")
def cors_server(tmp_path_factory):
    model = [] if BUNDLED.exists() else ["--model", str(FIXTURE)]
    s = Server([*model, "--cors-origin", ORIGIN], tmp_path_factory.mktemp("cors") / "serve.log")
    yield s
    s.stop()


def test_allowed_origin_preflight_lists_methods_and_headers(cors_server):
    status, headers, body = cors_server.request(
        "OPTIONS",
        "/v1/chat/completions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-client-trace",
        },
    )
    h = lower(headers)
    assert status == 204, body
    assert body == b""
    assert h["access-control-allow-origin"] == ORIGIN
    assert h["access-control-allow-methods"] == "POST"
    assert h["access-control-allow-headers"] == "authorization, content-type, x-client-trace"
    assert int(h["access-control-max-age"]) > 0


def test_allowed_origin_get_exposes_headers(cors_server, model_id):
    status, headers, _ = cors_server.request("GET", "/v1/models", headers={"Origin": ORIGIN})
    h = lower(headers)
    assert status == 200
    assert h["access-control-allow-origin"] == ORIGIN
    assert "origin" in h["vary"].lower()
    exposed = {name.strip() for name in h["access-control-expose-headers"].split(",")}
    assert {"x-cache", "x-tern-handler", "retry-after", "x-request-id"} <= exposed


def test_refused_origin_preflight_is_403_json(cors_server):
    status, headers, body = cors_server.json(
        "OPTIONS",
        "/v1/chat/completions",
        headers={"Origin": "http://evil.test", "Access-Control-Request-Method": "POST"},
    )
    assert status == 403
    assert body["error"]["code"] == "origin_not_allowed"
    assert not any(k.lower().startswith("access-control-") for k in headers)


def test_default_server_sends_no_cors_headers(server):
    for method, path in [("GET", "/v1/models"), ("GET", "/health")]:
        status, headers, _ = server.request(method, path, headers={"Origin": ORIGIN})
        assert status == 200
        assert not any(k.lower().startswith("access-control-") for k in headers), headers
    status, headers, _ = server.request(
        "OPTIONS", "/v1/chat/completions", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert status == 403
    assert not any(k.lower().startswith("access-control-") for k in headers), headers
