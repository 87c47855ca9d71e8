"""Starts a real `tern serve` for the end-to-end tests and talks to it over HTTP."""

import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "models" / "tern-tiny.gguf"
FIXTURE = ROOT / "tests" / "fixtures" / "tiny-tq2_0.gguf"
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
# The handler component host/build.rs builds, and the limit-testing one.
HANDLER_WASM = TARGET / "guest" / "wasm32-wasip2" / "release" / "tern_handler.wasm"
TESTBED_WASM = TARGET / "wasm32-wasip2" / "release" / "tern_testbed.wasm"


def tern_binary() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("TERN_BIN", ROOT / "target" / "release" / "tern"))
    if not path.exists():
        pytest.exit(f"{path} is missing: build it with `cargo build --release -p tern`", returncode=2)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def testbed_wasm() -> pathlib.Path:
    """The test component (guest/testbed), built if it is missing."""
    if not TESTBED_WASM.exists():
        subprocess.run(
            ["cargo", "build", "--release", "-p", "tern-testbed", "--target", "wasm32-wasip2"], check=True, cwd=ROOT
        )
    return TESTBED_WASM


def synth(tmp, name, *args):
    """A synthetic model of the bundled model's shape (random weights: it
    rarely ends its turn, so a generation runs as long as it is asked to)."""
    model = tmp / f"{name}.gguf"
    subprocess.run(
        [str(tern_binary()), "synth", "--like", "tern-tiny", "--name", name, "--out", str(model), *args],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    return model


class Server:
    """A running `tern serve` process."""

    def __init__(self, args, log_path, ready_path="/health", env=None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "w")
        self.log_path = pathlib.Path(log_path)
        # TERN_COMPONENT serves a handler built apart from the binary.
        component = os.environ.get("TERN_COMPONENT")
        extra = ["--component", component] if component and "--component" not in args else []
        self.proc = subprocess.Popen(
            [str(tern_binary()), "serve", "--addr", f"127.0.0.1:{self.port}", *extra, *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        self.wait_healthy(path=ready_path)

    def wait_healthy(self, timeout=60, path="/health"):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tern exited with {self.proc.returncode}; see {self.log.name}")
            try:
                status, _, _ = self.request("GET", path)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("tern did not become healthy")

    def request(self, method, path, body=None, headers=None, timeout=60):
        """(status, headers, body bytes) of one request; never raises for HTTP errors."""
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        if data is not None and "Content-Type" not in (headers or {}):
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, method, path, body=None, **kw):
        status, headers, raw = self.request(method, path, body, **kw)
        return status, headers, json.loads(raw)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """`tern serve` with no --model: the bundled model (the fixture until it exists)."""
    args = [] if BUNDLED.exists() else ["--model", str(FIXTURE)]
    s = Server(args, tmp_path_factory.mktemp("tern") / "serve.log")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def model_id(server):
    _, _, body = server.json("GET", "/v1/models")
    return body["data"][0]["id"]
