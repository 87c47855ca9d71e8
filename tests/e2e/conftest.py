"""Starts a real `tern serve` for the end-to-end tests and talks to it over HTTP."""

import glob
import hashlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
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


def wait_until_up(url, proc, log_path, what, timeout=60, interval=0.05):
    """Polls `url` until it answers 200; fails at once, with the end of its
    log, if `proc` exits first."""
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            tail = pathlib.Path(log_path).read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log_path}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.time() > deadline:
            raise RuntimeError(f"{what} did not answer {url} within {timeout} s")
        time.sleep(interval)


def stop_process(proc, log, sig=signal.SIGTERM):
    """Stops a server with `sig`, kills it after 10 s, and closes its log."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


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

    def __init__(self, args, log_path, ready_path="/health", env=None, port=None):
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "a")
        self.log_path = pathlib.Path(log_path)
        # TERN_COMPONENT serves a handler built apart from the binary.
        component = os.environ.get("TERN_COMPONENT")
        extra = ["--component", component] if component and "--component" not in args else []
        # Each server keeps its app data (accounts, chats) apart from the
        # others' and from the user's own data folder.
        if "--data-dir" not in args:
            extra += ["--data-dir", str(self.log_path.with_suffix(".data"))]
        self.proc = subprocess.Popen(
            [str(tern_binary()), "serve", "--addr", f"127.0.0.1:{self.port}", *extra, *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        self.wait_healthy(path=ready_path)

    def wait_healthy(self, timeout=60, path="/health"):
        wait_until_up(self.base + path, self.proc, self.log_path, "tern", timeout)

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
        stop_process(self.proc, self.log)


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


def postgres_bin():
    """The folder of Debian's PostgreSQL server programs, if installed."""
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(folder, "initdb")):
            return folder
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


class Postgres:
    """A PostgreSQL cluster of its own, listening only on a Unix socket in a
    private folder. `initdb` refuses to run as root, so under root the
    cluster belongs to `nobody`."""

    def __init__(self):
        self.bin = postgres_bin()
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="tern-pg-"))
        self.root.chmod(0o755)
        self.data, self.socket = self.root / "data", self.root / "sock"
        self.socket.mkdir()
        as_owner = []
        if os.geteuid() == 0:
            os.chown(self.root, 65534, 65534)
            os.chown(self.socket, 65534, 65534)
            as_owner = ["runuser", "-u", "nobody", "--"]
        self.as_owner = as_owner
        self.run("initdb", "-D", str(self.data), "-A", "trust", "-U", "tern", "--no-sync", "-E", "UTF8")
        options = f"-k {self.socket} -c listen_addresses= -c max_connections=200"
        self.run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w", "start")
        self.databases = 0

    def run(self, program, *args):
        return subprocess.run(
            [*self.as_owner, os.path.join(self.bin, program), *args], check=True, capture_output=True, text=True
        )

    def sql(self, database, statement):
        """Runs one statement with psql; returns its output."""
        return self.run("psql", "-h", str(self.socket), "-U", "tern", "-d", database, "-tAc", statement).stdout

    def new_database(self):
        """A fresh database's URL."""
        self.databases += 1
        name = f"tern{self.databases}"
        self.sql("postgres", f"CREATE DATABASE {name}")
        return f"postgres://tern@/{name}?host={self.socket}"

    def stop(self):
        subprocess.run(
            [*self.as_owner, os.path.join(self.bin, "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL from Debian's packages (`.ci/run` installs it)."""
    if postgres_bin() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (Debian package postgresql)")
        pytest.skip("PostgreSQL is not installed (Debian package postgresql)")
    pg = Postgres()
    yield pg
    pg.stop()


def need(program, package):
    if shutil.which(program) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{program} is not installed (Debian package {package})")
        pytest.skip(f"{program} is not installed (Debian package {package})")


class Redis:
    """A redis-server of its own on a loopback port, keeping nothing on disk."""

    def __init__(self, folder, start=True):
        need("redis-server", "redis-server")
        self.port, self.folder = free_port(), folder
        self.url = f"redis://127.0.0.1:{self.port}"
        if start:
            self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder)],
            stdout=open(self.folder / "redis.log", "a"), stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.cli("PING") == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def cli(self, *args):
        r = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True)
        return r.stdout.strip()

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class HAProxy:
    """HAProxy in front of the replicas: round-robin, health checks on
    /ready, and retries on another replica when a connection fails."""

    def __init__(self, folder, ports):
        need("haproxy", "haproxy")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = folder / "haproxy.cfg"
        servers = "\n".join(f"    server r{i} 127.0.0.1:{p}" for i, p in enumerate(ports))
        config.write_text(HAPROXY_CONFIG.format(port=self.port, servers=servers))
        log_path = folder / "haproxy.log"
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(["haproxy", "-f", str(config), "-db"], stdout=self.log, stderr=subprocess.STDOUT)
        wait_until_up(self.base + "/ready", self.proc, log_path, "HAProxy", timeout=15, interval=0.1)

    def stop(self):
        stop_process(self.proc, self.log)


# The sample configuration the README shows, on test ports.
HAPROXY_CONFIG = """\
global
    maxconn 2000

defaults
    mode http
    timeout connect 1s
    timeout client 120s
    timeout server 120s
    option forwardfor
    # A request whose connection fails is sent again, to another replica.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response
    option http-buffer-request

frontend tern
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /ready
    default-server check inter 300ms fall 2 rise 2
{servers}
"""


def forged_job_id(job_id, key):
    """Another caller's job id re-tagged for `key`, as someone who knows how
    tags are made would write it (the tag alone must not be what protects a
    job: the host checks who submitted it)."""
    engine_id = job_id.rsplit("-", 1)[0]
    identity = hashlib.sha256(b"tern identity\0" + hashlib.sha256(key.encode()).digest()).digest()[:8].hex()
    owner = f"identity:{identity}".encode()
    tag = hashlib.sha256(b"tern job owner\0" + owner + b"\0" + engine_id.encode()).digest()[:8].hex()
    return f"{engine_id}-{tag}"
