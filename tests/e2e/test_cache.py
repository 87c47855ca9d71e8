"""The response cache, /api/chat-optimized, /api/cache-stats and /metrics against a real server."""

import json
import socket
import time
import uuid

import openai
import pytest

from conftest import Server, BUNDLED, FIXTURE


def unique(text):
    """A prompt no other test (or earlier run against this server) has sent."""
    return f"{text} {uuid.uuid4().hex[:8]}"


def lower(headers):
    return {k.lower(): v for k, v in headers.items()}


def stats(server):
    status, _, body = server.json("GET", "/api/cache-stats")
    assert status == 200
    return body


def greedy_chat(model_id, content, **extra):
    return {"model": model_id, "messages": [{"role": "user", "content": content}], "max_tokens": 8,
            "temperature": 0, **extra}


def sse(raw):
    """The JSON (or `[DONE]`) payloads of an event stream."""
    events = [e[len("data: "):] for e in raw.decode().split("\n\n") if e.startswith("data: ")]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


def running(server):
    return server.json("GET", "/health")[2].get("running", 0)


def test_second_identical_greedy_chat_is_a_hit_with_the_same_text(server, model_id):
    before = stats(server)
    body = greedy_chat(model_id, unique("Tell me of the king."))
    status, headers, first = server.json("POST", "/v1/chat/completions", body)
    assert status == 200 and lower(headers)["x-cache"] == "miss" and first["cached"] is False
    status, headers, second = server.json("POST", "/v1/chat/completions", body)
    assert status == 200 and lower(headers)["x-cache"] == "hit" and second["cached"] is True
    assert second["choices"][0]["message"] == first["choices"][0]["message"]
    assert second["choices"][0]["finish_reason"] == first["choices"][0]["finish_reason"]
    assert second["usage"] == first["usage"]
    after = stats(server)
    assert after["hits"] == before["hits"] + 1
    assert after["misses"] == before["misses"] + 1
    assert after["stores"] == before["stores"] + 1
    assert after["entries"] >= 1 and 0 < after["bytes"] <= after["max_bytes"]
    assert after["ttl_seconds"] == 3600


def test_sampled_chat_is_not_cached_and_tenants_do_not_share(server, model_id):
    body = greedy_chat(model_id, unique("Sing"), temperature=0.9)
    _, headers, answer = server.json("POST", "/v1/chat/completions", body)
    assert "x-cache" not in lower(headers) and "cached" not in answer
    tenant = greedy_chat(model_id, unique("Whisper"))
    _, headers, _ = server.json("POST", "/v1/chat/completions", tenant, headers={"Authorization": "Bearer a"})
    assert lower(headers)["x-cache"] == "miss"
    _, headers, _ = server.json("POST", "/v1/chat/completions", tenant, headers={"Authorization": "Bearer b"})
    assert lower(headers)["x-cache"] == "miss"
    _, headers, _ = server.json("POST", "/v1/chat/completions", tenant, headers={"Authorization": "Bearer a"})
    assert lower(headers)["x-cache"] == "hit"


def test_openai_client_streams_a_cached_answer_like_a_fresh_one(server, model_id):
    client = openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0)
    content = unique("Speak of the sea.")

    def run():
        stream = client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": content}], max_tokens=12, temperature=0,
            stream=True, stream_options={"include_usage": True},
        )
        text, cached, usage = "", set(), None
        for chunk in stream:
            cached.add(chunk.model_extra.get("cached"))
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            if chunk.usage:
                usage = chunk.usage
        return text, cached, usage

    fresh, hit = run(), run()
    assert fresh[1] == {False} and hit[1] == {True}
    assert hit[0] == fresh[0] and hit[2] == fresh[2]


def test_chat_optimized_streams_then_replays_from_the_cache(server, model_id):
    body = {"message": unique("Hello there"), "system_prompt": "Answer briefly.", "max_tokens": 10}
    status, headers, raw = server.request("POST", "/api/chat-optimized", body)
    assert status == 200 and lower(headers)["content-type"] == "text/event-stream"
    assert lower(headers)["x-cache"] == "miss"
    fresh = sse(raw)
    assert all(e["cached"] is False for e in fresh)
    assert [e["done"] for e in fresh] == [False] * (len(fresh) - 1) + [True]
    assert len({e["request_id"] for e in fresh}) == 1
    done = fresh[-1]
    assert done["content"] == "" and done["usage"]["completion_tokens"] >= 1 and "timings" in done

    status, headers, raw = server.request("POST", "/api/chat-optimized", body)
    assert status == 200 and lower(headers)["x-cache"] == "hit"
    hit = sse(raw)
    assert all(e["cached"] is True for e in hit)
    assert "".join(e["content"] for e in hit) == "".join(e["content"] for e in fresh)
    assert hit[-1]["usage"] == done["usage"]
    assert hit[0]["request_id"] != fresh[0]["request_id"]


def test_chat_optimized_refusal_is_one_error_event_with_a_status(server):
    status, _, raw = server.request("POST", "/api/chat-optimized", {"max_tokens": 3})
    assert status == 400
    [event] = sse(raw)
    assert event["done"] is True and "message" in event["error"] and event["request_id"]


def settled(server):
    """Cache and engine counters once no generation runs and no finished answer is still being stored."""
    deadline = time.time() + 5
    last = None
    while True:
        assert time.time() < deadline, "the server did not settle"
        now = (running(server), stats(server)["stores"], server.json("GET", "/metrics")[2]["cancelled_total"])
        if now[0] == 0 and now == last:
            return {"stores": now[1], "cancelled": now[2]}
        last = now
        time.sleep(0.05)


def test_stream_dropped_midway_is_not_cached(server):
    # A greedy answer may end before the client leaves; try prompts until the
    # engine saw the client go.
    for attempt in range(10):
        body = json.dumps({"message": unique(f"Go on {attempt}"), "max_tokens": 100000, "temperature": 0}).encode()
        request = (b"POST /api/chat-optimized HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        before = settled(server)
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(request)
        got = b""
        while got.count(b"data: ") < 3 and b'"done":true' not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        s.close()
        assert b"x-cache: miss" in got.lower()
        after = settled(server)
        # Only a generation the engine cancelled is known to have been cut
        # short; one that ended first may or may not have been written whole.
        if after["cancelled"] > before["cancelled"]:
            break
    else:
        pytest.fail("every answer ended before its client left")
    assert after["stores"] == before["stores"]
    # The same request misses again: nothing was kept.
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(request)
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    s.close()
    assert b"x-cache: miss" in head.lower()


def test_cache_stats_invalidate_and_clear(server, model_id):
    body = greedy_chat(model_id, unique("Remember me"))
    server.json("POST", "/v1/chat/completions", body)
    status, _, listed = server.json("GET", "/api/cache-stats?keys=1")
    assert status == 200 and listed["keys"]
    # The key of this request is the one that was not there before.
    other = greedy_chat(model_id, unique("And me"))
    server.json("POST", "/v1/chat/completions", other)
    new_keys = set(server.json("GET", "/api/cache-stats?keys=1")[2]["keys"]) - set(listed["keys"])
    assert len(new_keys) == 1
    status, _, done = server.json("POST", "/api/cache-stats", {"action": "invalidate", "key": new_keys.pop()})
    assert status == 200 and done["deleted"] == 1
    assert lower(server.json("POST", "/v1/chat/completions", other)[1])["x-cache"] == "miss"

    status, _, done = server.json("POST", "/api/cache-stats", {"action": "clear"})
    assert status == 200 and done["deleted"] >= 1
    assert stats(server)["entries"] == 0
    assert lower(server.json("POST", "/v1/chat/completions", body)[1])["x-cache"] == "miss"

    for bad in ({"action": "flush"}, {"action": "invalidate"}):
        status, _, error = server.json("POST", "/api/cache-stats", bad)
        assert status == 400 and error["error"]["type"] == "invalid_request_error"


def test_entries_expire_after_the_cache_ttl(tmp_path, model_id):
    args = [] if BUNDLED.exists() else ["--model", str(FIXTURE)]
    short = Server([*args, "--cache-ttl", "1"], tmp_path / "serve.log")
    try:
        assert stats(short)["ttl_seconds"] == 1
        body = greedy_chat(model_id, "Briefly")
        assert lower(short.json("POST", "/v1/chat/completions", body)[1])["x-cache"] == "miss"
        assert lower(short.json("POST", "/v1/chat/completions", body)[1])["x-cache"] == "hit"
        time.sleep(1.2)
        assert lower(short.json("POST", "/v1/chat/completions", body)[1])["x-cache"] == "miss"
        after = stats(short)
        assert after["invalidations"] == 1 and after["hits"] == 1 and after["misses"] == 2
    finally:
        short.stop()


def test_metrics_are_json_by_default_and_prometheus_for_scrapers(server, model_id):
    server.json("POST", "/v1/chat/completions", greedy_chat(model_id, unique("Count me")))
    before = server.json("GET", "/metrics")[2]
    server.json("POST", "/v1/chat/completions", {"messages": []})
    status, headers, m = server.json("GET", "/metrics")
    assert status == 200 and lower(headers)["content-type"] == "application/json"
    assert m["errors_total"] == before["errors_total"] + 1
    assert m["requests_total"] >= 1 and m["generation_time_total_ms"] > 0
    assert m["average_generation_time_ms"] > 0 and m["cache"]["stores"] >= 1

    scraper = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    for path, headers in (("/metrics", {"Accept": scraper}), ("/metrics/prometheus", {})):
        status, got, raw = server.request("GET", path, headers=headers)
        assert status == 200 and lower(got)["content-type"].startswith("text/plain; version=0.0.4")
        names = {l.split()[0].split("{")[0] for l in raw.decode().splitlines() if l and not l.startswith("#")}
        for name in ("llamacpp:prompt_tokens_total", "llamacpp:tokens_predicted_total",
                     "llamacpp:requests_processing", "llamacpp:requests_deferred", "llamacpp:kv_cache_usage_ratio",
                     "vllm:num_requests_running", "vllm:num_requests_waiting",
                     "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_count",
                     "vllm:e2e_request_latency_seconds_sum", "vllm:request_queue_time_seconds_count",
                     "vllm:prefix_cache_hits_total", "tern_response_cache_hits_total", "tern_http_errors_total"):
            assert name in names, name
