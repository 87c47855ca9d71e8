"""The host's operations: hot swap, API keys, limits, runaway guests, slow
clients, graceful shutdown, request ids, configuration and host metrics."""

import concurrent.futures
import http.client
import json
import os
import pathlib
import platform
import signal
import socket
import subprocess
import threading
import time

import openai
import pytest

from conftest import BUNDLED, FIXTURE, HANDLER_WASM, ROOT, Server, synth, tern_binary
from conftest import testbed_wasm as limit_component

ADMIN = {"Authorization": "Bearer admin-secret"}


def model_args():
    return [] if BUNDLED.exists() else ["--model", str(FIXTURE)]


def model_of(server):
    return server.json("GET", "/v1/models", headers=ADMIN | {"Authorization": "Bearer sk-flag"})[2]["data"][0]["id"]


def variant(wasm: bytes, tag: str) -> bytes:
    """The same component with a custom section appended: another digest."""
    name = b"tern-test"
    payload = bytes([len(name)]) + name + tag.encode()
    return wasm + b"\x00" + leb128(len(payload)) + payload


def leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def rss_kib(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def chat_body(stream, max_tokens=8, model="tern-tiny", **extra):
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Speak of the king."}],
        "max_tokens": max_tokens,
        "stream": stream,
        **extra,
    }


def post(port, path, body, headers=None, timeout=60):
    """(status, headers, body) over a fresh connection; streams are read whole."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


# --- hot swap ---------------------------------------------------------------


@pytest.fixture
def swap_server(tmp_path):
    wasm = tmp_path / "handler.wasm"
    wasm.write_bytes(HANDLER_WASM.read_bytes())
    s = Server(
        [*model_args(), "--component", str(wasm), "--admin-key", "admin-secret", "--compile-cache", str(tmp_path / "cc")],
        tmp_path / "serve.log",
    )
    s.wasm = wasm
    yield s
    s.stop()


def active_version(server):
    status, _, body = server.json("GET", "/admin/component", headers=ADMIN)
    assert status == 200, body
    return body["version"]


def test_twenty_swaps_under_load_fail_no_request_and_later_responses_carry_the_new_version(swap_server):
    s = swap_server
    model = model_of(s)
    original = HANDLER_WASM.read_bytes()
    stop = threading.Event()
    results = []  # (started, version, ok, detail)
    lock = threading.Lock()

    def client(i):
        streaming = i % 2 == 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                status, headers, data = post(s.port, "/v1/chat/completions", chat_body(streaming, model=model))
                ok = status == 200 and (data.rstrip().endswith(b"data: [DONE]") if streaming else b'"choices"' in data)
                detail = (status, data[-200:])
                version = headers.get("x-tern-component")
            except Exception as e:  # a reset connection is a failure too
                ok, detail, version = False, repr(e), None
            with lock:
                results.append((started, version, ok, detail))

    swaps = []  # (began, finished, version)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client, i) for i in range(8)]
        time.sleep(0.5)
        for n in range(20):
            began = time.monotonic()
            status, _, body = s.json("POST", "/admin/component", variant(original, f"v{n}"), headers=ADMIN)
            finished = time.monotonic()
            assert status == 200, body
            swaps.append((began, finished, body["version"]))
            time.sleep(0.15)
        time.sleep(0.3)
        stop.set()
        for f in futures:
            f.result()

    failures = [r for r in results if not r[2]]
    assert not failures, failures[:5]
    assert len(results) > 40, "the load was too light to mean anything"
    checked = 0
    for started, version, _, _ in results:
        done = [sw for sw in swaps if sw[1] <= started]
        if not done:
            continue
        latest = done[-1]
        following = [sw for sw in swaps if sw[0] > latest[1]]
        if following and following[0][0] <= started:
            continue  # started while the next swap was under way: either version
        assert version == latest[2], (started, version, latest)
        checked += 1
    assert checked > 20
    assert active_version(s) == swaps[-1][2]
    _, _, metrics = s.request("GET", "/metrics/host")
    assert b"tern_component_swaps_total 20" in metrics


def test_a_broken_component_is_rejected_and_the_old_one_keeps_answering(swap_server):
    s = swap_server
    before = active_version(s)
    real = HANDLER_WASM.read_bytes()
    broken = [b"not wasm at all", b"\x00asm\x01\x00\x00\x00", real[: len(real) // 2]]
    for wasm in broken:
        status, _, body = s.json("POST", "/admin/component", wasm, headers=ADMIN)
        assert status == 422, body
        assert body["error"]["code"] == "component_rejected"
        assert "keeps serving" in body["error"]["message"]
        status, headers, _ = s.request("GET", "/health")
        assert status == 200 and headers["x-tern-component"] == before
    # A broken file on disk is refused the same way.
    s.wasm.write_bytes(b"\x00asm garbage")
    time.sleep(1.5)
    assert active_version(s) == before
    assert "component rejected" in s.log_path.read_text()
    _, _, metrics = s.request("GET", "/metrics/host")
    assert b"tern_component_rejected_total 4" in metrics


def test_the_component_file_is_watched_and_sighup_reloads_it(swap_server):
    s = swap_server
    before = active_version(s)
    new = variant(HANDLER_WASM.read_bytes(), "watched")
    tmp = s.wasm.with_suffix(".tmp")
    tmp.write_bytes(new)
    os.replace(tmp, s.wasm)
    deadline = time.time() + 10
    while active_version(s) == before:
        assert time.time() < deadline, "the changed file was not picked up"
        time.sleep(0.1)
    after = active_version(s)
    status, headers, _ = s.request("GET", "/v1/models")
    assert status == 200 and headers["x-tern-component"] == after
    s.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while "SIGHUP" not in s.log_path.read_text():
        assert time.time() < deadline, "SIGHUP did not reload"
        time.sleep(0.1)
    assert s.request("GET", "/health")[0] == 200


def test_admin_needs_the_admin_key(server):
    status, _, body = server.json("GET", "/admin/component")
    assert status == 403 and body["error"]["code"] == "admin_disabled"


def test_admin_keys_can_come_from_a_file(tmp_path):
    (tmp_path / "admin").write_text("# operators\nadmin-from-file\n")
    s = Server([*model_args(), "--admin-key-file", str(tmp_path / "admin")], tmp_path / "serve.log")
    try:
        status, _, _ = s.request("GET", "/admin/component", headers={"Authorization": "Bearer admin-from-file"})
        assert status == 200
    finally:
        s.stop()


def test_admin_refuses_a_wrong_key(swap_server):
    status, headers, body = swap_server.json("POST", "/admin/component", b"x", headers={"Authorization": "Bearer no"})
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, _, body = swap_server.json("GET", "/admin/component", headers=ADMIN)
    assert status == 200 and body["digest"].startswith("sha256:") and body["world"]["exports"]


def test_a_restart_reads_the_compiled_component_from_the_disk_cache(tmp_path):
    args = [*model_args(), "--admin-key", "admin-secret", "--compile-cache", str(tmp_path / "cc")]
    first = Server(args, tmp_path / "first.log")
    _, _, one = first.json("GET", "/admin/component", headers=ADMIN)
    first.stop()
    second = Server(args, tmp_path / "second.log")
    _, _, two = second.json("GET", "/admin/component", headers=ADMIN)
    second.stop()
    assert not one["from_cache"] and two["from_cache"], (one, two)
    assert one["digest"] == two["digest"]
    assert two["load_ms"] < one["load_ms"]


# --- API keys ---------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keys")
    (tmp / "keys").write_text("# more keys\nsk-from-file\n")
    s = Server(
        [*model_args(), "--api-key", "sk-flag", "--api-key-file", str(tmp / "keys")],
        tmp / "serve.log",
    )
    yield s
    s.stop()


def test_every_api_route_needs_a_key(keyed_server):
    for method, path, body in [
        ("GET", "/v1/models", None),
        ("POST", "/v1/chat/completions", chat_body(False)),
        ("GET", "/metrics", None),
        ("GET", "/metrics/host", None),
        ("POST", "/api/generate", {"model": "x", "prompt": "hi"}),
    ]:
        status, headers, got = keyed_server.json(method, path, body)
        assert status == 401, (path, got)
        assert got["error"]["code"] == "invalid_api_key" and got["error"]["type"] == "authentication_error"
        assert {k.lower(): v for k, v in headers.items()}["www-authenticate"] == "Bearer"
        status, _, _ = keyed_server.request(method, path, body, headers={"Authorization": "Bearer sk-wrong"})
        assert status == 401


def test_probes_and_the_chat_page_need_no_key(keyed_server):
    for path in ["/health", "/ready", "/"]:
        assert keyed_server.request("GET", path, headers={"Accept": "text/html"})[0] == 200, path
    status, _, _ = keyed_server.request("OPTIONS", "/v1/chat/completions")
    assert status in (200, 204)


def test_keys_from_flags_and_files_work_with_the_openai_client(keyed_server):
    for key in ["sk-flag", "sk-from-file"]:
        client = openai.OpenAI(base_url=keyed_server.base + "/v1", api_key=key)
        assert client.models.list().data
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed_server.base + "/v1", api_key="sk-nope").models.list()
    status, _, _ = keyed_server.request("GET", "/v1/models", headers={"x-api-key": "sk-flag"})
    assert status == 200


# --- limits and runaway guests ------------------------------------------------


@pytest.fixture(scope="module")
def testbed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("testbed")
    s = Server(
        [
            *model_args(),
            "--component", str(limit_component()),
            "--request-timeout", "1",
            "--instance-memory-mib", "32",
            "--header-timeout", "2",
            "--keep-alive", "2",
            "--max-header-bytes", "8192",
            "--max-body-kib", "4",
            "--compile-cache", str(tmp / "cc"),
        ],
        tmp / "serve.log",
        ready_path="/hello",
    )
    yield s
    s.stop()


def get(port, path, timeout=10):
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status, time.monotonic() - started


def test_runaway_guests_get_a_5xx_within_the_deadline_while_healthy_requests_succeed(testbed):
    deadline, tick, slack = 1.0, 0.01, 0.5
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        runaways = [pool.submit(get, testbed.port, path) for path in ["/loop", "/grow", "/recurse"] * 3]
        healthy = [pool.submit(get, testbed.port, "/hello") for _ in range(60)]
        for f in healthy:
            status, took = f.result()
            assert status == 200 and took < deadline, took
        for f in runaways:
            status, took = f.result()
            assert 500 <= status < 600 and took < deadline + tick + slack, (status, took)
    status, _, body = testbed.json("GET", "/loop")
    assert status == 504 and body["error"]["code"] == "handler_timeout"


def test_a_thousand_runaways_leave_the_resident_memory_where_it_was(testbed):
    pid = testbed.proc.pid
    paths = ["/grow", "/recurse"] * 490 + ["/loop"] * 20
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        # Warm up: every pool slot used, every kind of trap seen once.
        list(pool.map(lambda p: get(testbed.port, p), ["/grow", "/recurse"] * 50 + ["/loop"] * 8))
        start = rss_kib(pid)
        seen = []
        for part in range(4):
            chunk = paths[part::4]
            statuses = list(pool.map(lambda p: get(testbed.port, p)[0], chunk))
            assert all(500 <= s < 600 for s in statuses)
            seen.append(rss_kib(pid))
    end = rss_kib(pid)
    assert end <= start * 1.05, f"RSS {start} KiB before, then {seen} KiB after each 250 runaways"
    assert get(testbed.port, "/hello")[0] == 200


def test_oversized_heads_get_431_and_declared_large_bodies_413(testbed):
    with socket.create_connection(("127.0.0.1", testbed.port)) as s:
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 431")
    status, _, body = testbed.json("POST", "/hello", b"x" * 5000)
    assert status == 413 and body["error"]["code"] == "request_too_large"


def test_slow_clients_are_closed_at_the_header_timeout_and_others_are_served(testbed):
    """500 connections sending their headers a byte a second."""
    socks, opened = [], []
    for _ in range(500):
        s = socket.create_connection(("127.0.0.1", testbed.port))
        s.setblocking(False)
        socks.append(s)
        opened.append(time.monotonic())
    head = b"GET /hello HTTP/1.1\r\nHost: slow\r\n"
    started = time.monotonic()
    closed_at = {}
    served = []
    i = 0
    while len(closed_at) < len(socks) and time.monotonic() - started < 10:
        for n, s in enumerate(socks):
            if n in closed_at:
                continue
            try:
                s.send(head[i % len(head) : i % len(head) + 1])
                if s.recv(1) == b"":
                    closed_at[n] = time.monotonic() - opened[n]
            except BlockingIOError:
                pass
            except OSError:
                closed_at[n] = time.monotonic() - opened[n]
        served.append(get(testbed.port, "/hello")[0])
        i += 1
        time.sleep(max(0.0, started + i - time.monotonic()))
    for s in socks:
        s.close()
    assert len(closed_at) == 500, f"{500 - len(closed_at)} slow connections still open after 10 s"
    # The header timeout is 2 s; bytes are looked at once a second.
    assert max(closed_at.values()) < 2 + 1.5, max(closed_at.values())
    first = min(closed_at, key=closed_at.get)
    assert closed_at[first] >= 1.9, (first, closed_at[first], opened[first] - started)
    assert all(s == 200 for s in served)


def test_idle_kept_alive_connections_are_closed(testbed):
    conn = http.client.HTTPConnection("127.0.0.1", testbed.port, timeout=10)
    conn.request("GET", "/hello")
    assert conn.getresponse().read() == b"hello\n"
    sock = conn.sock
    time.sleep(3.5)
    assert sock.recv(1) == b"", "the idle connection is still open"


# --- graceful shutdown ---------------------------------------------------------


def stream_until_end(port, body, out, i):
    """Reads one SSE stream; records how it ended."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        events = [line[6:] for line in data.decode().splitlines() if line.startswith("data: ")]
        if events and events[-1] == "[DONE]":
            out[i] = "done"
        elif events and "error" in json.loads(events[-1]):
            out[i] = "error-event"
        else:
            out[i] = f"cut: {data[-200:]!r}"
    except Exception as e:
        out[i] = f"failed: {e!r}"


@pytest.mark.parametrize("grace,max_tokens,expect", [(20, 16, {"done"}), (1, 100000, {"error-event"})])
def test_sigterm_with_twenty_streams_lets_them_finish_or_end_with_an_error_event(tmp_path, grace, max_tokens, expect):
    # Streams that must outlive the grace cannot end by themselves: the end
    # of text is never picked, and the context is too deep and long to fill
    # within the grace even on a machine many times faster than this one.
    model = synth(tmp_path, "shutdown", "--layers", "48", "--context", "16384")
    s = Server(["--model", str(model), "--shutdown-grace", str(grace), "--max-running", "20"], tmp_path / "serve.log")
    out = [None] * 20
    body = chat_body(True, max_tokens, model="shutdown", ignore_eos=expect == {"error-event"})
    threads = [threading.Thread(target=stream_until_end, args=(s.port, body, out, i)) for i in range(20)]
    for t in threads:
        t.start()
    # Signal once every stream is running or over: a sampled stream may meet
    # the end of text early, and then the others never run twenty at once.
    deadline = time.time() + 30
    while s.json("GET", "/health")[2]["running"] + sum(o is not None for o in out) < 20:
        assert time.time() < deadline
        time.sleep(0.05)
    signalled = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    code = s.proc.wait(timeout=grace + 15)
    for t in threads:
        t.join(timeout=10)
    took = time.monotonic() - signalled
    s.log.close()
    assert code == 0, s.log_path.read_text()[-2000:]
    assert set(out) <= expect | {"done"} and all(o in expect | {"done"} for o in out), out
    assert took < grace + 6, took
    if expect == {"error-event"}:
        assert out == ["error-event"] * 20, out


# --- request ids, logs, config -------------------------------------------------------


def test_request_ids_are_honoured_or_generated_and_logged_as_json(tmp_path):
    s = Server([*model_args(), "--log-format", "json"], tmp_path / "serve.log")
    try:
        status, headers, _ = s.request("GET", "/v1/models", headers={"X-Request-Id": "req-abc-123"})
        assert status == 200 and headers["x-request-id"] == "req-abc-123"
        _, headers, _ = s.request("GET", "/v1/models")
        generated = headers["x-request-id"]
        assert len(generated) == 16
        time.sleep(0.2)
    finally:
        s.stop()
    lines = [json.loads(line) for line in s.log_path.read_text().splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("id") == "req-abc-123" and line.get("message") == "request"]
    assert mine and mine[0]["status"] == 200 and mine[0]["route"] == "/v1/models" and "ms" in mine[0], lines[-5:]
    assert any(line.get("id") == generated for line in lines)


def test_a_traced_step_says_where_its_time_went(tmp_path):
    """`RUST_LOG=…=trace` breaks each forward pass into ternary products,
    attention, element-wise work and the head, beside the scheduler's step."""
    s = Server([*model_args(), "--log-format", "json"], tmp_path / "serve.log",
               env={"RUST_LOG": "info,tern_engine::scheduler=trace,tern_engine::model::cpu=trace"})
    try:
        status, _, body = s.json("POST", "/v1/completions", {"model": model_of(s), "prompt": "The king",
                                                             "max_tokens": 8, "ignore_eos": True})
        assert status == 200, body
        time.sleep(0.2)
    finally:
        s.stop()
    lines = [json.loads(line) for line in s.log_path.read_text().splitlines() if line.startswith("{")]
    passes = [line for line in lines if line.get("message") == "forward pass"]
    steps = [line for line in lines if line.get("message") == "step"]
    assert len(passes) >= 8 and len(passes) == len(steps), (len(passes), len(steps))
    for forward, step in zip(passes, steps):
        parts = [forward[f"{phase}_ms"] for phase in ("ternary", "attention", "elementwise", "head")]
        assert all(p >= 0 for p in parts) and parts[0] > 0 and parts[3] > 0, forward
        # The phases cover the pass, which is the step's forward call.
        assert sum(parts) <= step["ms"] + 0.05, (forward, step)
    assert passes[0]["rows"] > 1 and passes[-1]["rows"] == 1


def tern_config(cwd, *args, env=None):
    return subprocess.run(
        [str(tern_binary()), "config", "--print", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={k: v for k, v in {**os.environ, **(env or {})}.items() if not k.startswith("TERN_") or k in (env or {})},
    )


def test_settings_come_from_flags_then_environment_then_tern_toml(tmp_path):
    (tmp_path / "tern.toml").write_text(
        '[engine]\nmax-running = 4\nstep_tokens = 32\n[queue]\nmax-queue = 7\n[auth]\napi-key = ["sk-toml"]\n'
    )
    r = tern_config(tmp_path, "--max-running", "9", env={"TERN_STEP_TOKENS": "48"})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "max-running = 9  # flag" in out
    assert "step-tokens = 48  # env TERN_STEP_TOKENS" in out
    assert "max-queue = 7  # file" in out
    assert "prefill-chunk = 16  # default" in out
    assert 'api-key = "***"' in out and "sk-toml" not in out


def test_a_misspelt_setting_is_an_error(tmp_path):
    (tmp_path / "tern.toml").write_text("[engine]\nmax-runing = 4\n")
    r = tern_config(tmp_path)
    assert r.returncode != 0 and "unknown setting [engine] max-runing" in r.stderr


def test_port_from_the_environment_sets_the_listening_port():
    from conftest import free_port

    port = free_port()
    proc = subprocess.Popen(
        [str(tern_binary()), "serve", *model_args()],
        cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if k != "TERN_ADDR"}, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                if get(port, "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "nothing listened on PORT"
            time.sleep(0.05)
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_ready_is_separate_from_health(server):
    status, _, body = server.json("GET", "/ready")
    assert status == 200 and body == {"status": "ready"}
    status, _, body = server.json("GET", "/health")
    assert status == 200 and body["uptime_s"] > 0 and body["memory_bytes"] > 1 << 20


def test_compress_gzips_whole_answers_but_never_streams(tmp_path):
    import gzip

    s = Server([*model_args(), "--compress"], tmp_path / "serve.log")
    try:
        plain = s.request("GET", "/openapi.json")[2]
        status, headers, body = s.request("GET", "/openapi.json", headers={"Accept-Encoding": "gzip"})
        headers = {k.lower(): v for k, v in headers.items()}
        assert status == 200 and headers["content-encoding"] == "gzip" and "accept-encoding" in headers["vary"]
        assert gzip.decompress(body) == plain and len(body) < len(plain) / 3
        model = model_of(s)
        status, headers, data = post(s.port, "/v1/chat/completions", chat_body(True, 32, model), {"Accept-Encoding": "gzip"})
        assert status == 200 and "content-encoding" not in headers and data.rstrip().endswith(b"data: [DONE]")
        status, headers, _ = s.request("GET", "/openapi.json", headers={"Accept-Encoding": "gzip;q=0"})
        assert "content-encoding" not in {k.lower() for k in headers}
    finally:
        s.stop()


def test_kv_prefault_makes_the_cache_resident_at_load_and_answers_the_same(tmp_path):
    """`--kv-prefault` touches the KV cache's pages at load: resident memory
    grows by the budget before any request, and greedy answers do not change."""
    budget_mib = 256
    rss_mib, texts = {}, {}
    for prefault in (False, True):
        flags = ["--kv-memory-mib", str(budget_mib)] + (["--kv-prefault"] if prefault else [])
        s = Server([*model_args(), *flags], tmp_path / f"serve-{prefault}.log")
        try:
            rss_mib[prefault] = rss_kib(s.proc.pid) >> 10
            status, _, body = s.json("POST", "/v1/chat/completions", chat_body(False, max_tokens=8, temperature=0))
            assert status == 200, body
            texts[prefault] = body["choices"][0]["message"]["content"]
        finally:
            s.stop()
    assert rss_mib[True] - rss_mib[False] >= budget_mib * 0.9, rss_mib
    assert texts[True] == texts[False]


def test_a_kernel_variant_can_be_named_and_an_unknown_one_is_an_error(tmp_path):
    wrong = tern_config(tmp_path, env={"TERN_KERNELS": "sse9"})
    assert wrong.returncode != 0
    assert "TERN_KERNELS=sse9: no such kernel variant; this CPU runs reference" in wrong.stderr, wrong.stderr
    args = ["bench", "--model", str(BUNDLED), "--prompt-tokens", "4", "--decode-tokens", "2", "--reps", "1", "--json"]
    runs = {}
    for name in ["reference", None]:
        env = {k: v for k, v in os.environ.items() if k != "TERN_KERNELS"} | ({"TERN_KERNELS": name} if name else {})
        r = subprocess.run([str(tern_binary()), *args], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        runs[name] = json.loads(r.stdout.strip().splitlines()[-1])["kernels"]
    assert runs["reference"] == "reference"
    assert runs[None] != "reference" or platform.machine() not in ("x86_64", "aarch64")
