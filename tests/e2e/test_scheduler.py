"""The scheduler seen through HTTP: clients leaving, a full queue, prefix
reuse, deadlines, and batching that leaves results unchanged."""

import concurrent.futures
import json
import random
import socket
import time

import pytest

from conftest import Server, synth


def health(server):
    status, _, body = server.json("GET", "/health")
    assert status == 200, body
    return body


def chat(model_id, content, **extra):
    return {"model": model_id, "messages": [{"role": "user", "content": content}], **extra}


def open_stream(server, body):
    """A raw streaming request on its own socket, so the test can drop it."""
    raw = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(raw)}\r\n\r\n".encode()
        + raw
    )
    return s


def test_sixty_four_clients_leaving_at_random_points_leave_nothing_behind(server, model_id):
    rng = random.Random(64)
    plans = [rng.randrange(0, 12) for _ in range(64)]

    def client(i, frames):
        s = open_stream(server, chat(model_id, f"Tell me of the king, {i}", stream=True, max_tokens=100000))
        got = b""
        s.settimeout(60)
        # A generation may end (and the connection stay open) before `frames`.
        while got.count(b"data: ") < frames and b"[DONE]" not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        s.close()

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        list(pool.map(client, range(64), plans))
    left = time.time()
    while True:
        h = health(server)
        if h["running"] == 0 and h["waiting"] == 0 and h["kv_blocks_used"] == 0:
            break
        assert time.time() - left < 1.0, f"still busy a second after the clients left: {h}"
        time.sleep(0.01)


@pytest.fixture
def narrow_server(tmp_path):
    """One sequence at a time and room for one more in the queue, on a
    model slow enough (48 layers, 4,096 positions) to keep both busy."""
    model = synth(tmp_path, "slow", "--layers", "48", "--context", "4096")
    s = Server(["--model", str(model), "--max-running", "1", "--max-queue", "1"], tmp_path / "serve.log")
    yield s
    s.stop()


def test_a_request_beyond_the_queue_gets_429_with_retry_after_at_once(narrow_server):
    model = narrow_server.json("GET", "/v1/models")[2]["data"][0]["id"]
    long = dict(chat(model, "Go on", stream=True, max_tokens=100000, temperature=0, ignore_eos=True))
    running = open_stream(narrow_server, long)
    deadline = time.time() + 10
    while health(narrow_server)["running"] != 1:
        assert time.time() < deadline
        time.sleep(0.01)
    queued = open_stream(narrow_server, long)
    while health(narrow_server)["waiting"] != 1:
        assert time.time() < deadline
        time.sleep(0.01)
    started = time.perf_counter()
    status, headers, body = narrow_server.json("POST", "/v1/chat/completions", chat(model, "Hello"))
    took = time.perf_counter() - started
    assert status == 429, body
    retry_after = {k.lower(): v for k, v in headers.items()}["retry-after"]
    assert int(retry_after) >= 1
    assert body["error"]["type"]
    assert took < 0.05, f"the refusal took {took * 1e3:.1f} ms"
    running.close()
    queued.close()


@pytest.fixture(scope="module")
def long_context_server(tmp_path_factory):
    """A synthetic model of the bundled model's shape with a 2,048-token context."""
    tmp = tmp_path_factory.mktemp("long")
    s = Server(["--model", str(synth(tmp, "long", "--context", "2048"))], tmp / "serve.log")
    yield s
    s.stop()


def test_a_second_request_with_the_same_long_prefix_reuses_its_cache(long_context_server):
    rng = random.Random(5)
    words = ["king", "queen", "lord", "sword", "crown", "field", "river", "night", "light", "stone"]
    # The synthetic vocabulary has few merges: about three tokens per word.
    system = " ".join(rng.choice(words) for _ in range(400))
    messages = lambda q: [{"role": "system", "content": system}, {"role": "user", "content": q}]
    status, _, first = long_context_server.json(
        "POST", "/v1/chat/completions", {"model": "long", "messages": messages("Who?"), "max_tokens": 2}
    )
    assert status == 200, first
    second = long_context_server.json(
        "POST", "/v1/chat/completions", {"model": "long", "messages": messages("Where?"), "max_tokens": 2}
    )[2]
    assert first["usage"]["prompt_tokens"] >= 1000, first["usage"]
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= 900, second["usage"]
    assert second["timings"]["cache_n"] == second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert second["timings"]["prompt_ms"] < first["timings"]["prompt_ms"], (first["timings"], second["timings"])


def test_a_deadline_ends_generation_with_finish_reason_timeout(long_context_server):
    # A 1,000-token prompt takes far longer than 30 ms to read.
    long = " ".join(f"word{i}" for i in range(300))
    body = {"model": "long", "messages": [{"role": "user", "content": long}], "max_tokens": 50, "timeout_ms": 30}
    status, _, answer = long_context_server.json("POST", "/v1/chat/completions", body)
    assert status == 200, answer
    assert answer["choices"][0]["finish_reason"] == "timeout"
    assert answer["usage"]["completion_tokens"] < 50


def test_greedy_output_is_the_same_alone_and_with_fifteen_others(server, model_id):
    prompts = [f"Speak, {name}, of the {thing}" for name in ("Romeo", "Juliet", "Hamlet", "Lear")
               for thing in ("king", "sea", "night", "crown")]

    def ask(p):
        status, _, body = server.json("POST", "/v1/chat/completions", chat(model_id, p, max_tokens=30, temperature=0))
        assert status == 200, body
        return body["choices"][0]["message"]["content"]

    alone = [ask(p) for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(ask, prompts))
    assert together == alone
