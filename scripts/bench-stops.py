#!/usr/bin/env python3
"""What stop strings cost the other clients of a shared decode step.

Starts `tern serve` on a synthetic model of the bundled model's shape with
a 16,384-token context (random weights: it rarely ends its turn) and times one client's 200-token
stream three ways, in the same run: alone; next to four endless generations
without stop strings; and next to four carrying the most the engine takes
(16 stop strings of 256 bytes each, which never match). Prints each time
and the ratio of the last two: 1.0 means the stop strings cost the step
nothing.

    scripts/bench-stops.py [--rounds N]
"""

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
TERN = pathlib.Path(os.environ.get("TERN_BIN", ROOT / "target" / "release" / "tern"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_stream(port, body):
    """An Ollama generation on its own socket (Ollama sets no limit on stop
    strings, so the engine's own limit of 16 applies)."""
    payload = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(
        b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    return s


def timed_stream(port):
    """Seconds for one greedy 200-token stream, end of text ignored."""
    body = {"model": "tern-tiny", "messages": [{"role": "user", "content": "Speak of the king."}],
            "max_tokens": 200, "temperature": 0, "ignore_eos": True, "stream": True, "use_cache": False}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(req) as r:
        r.read()
    return time.perf_counter() - started


def median_with(port, neighbours, rounds):
    times = []
    for _ in range(rounds):
        others = [open_stream(port, body) for body in neighbours]
        time.sleep(0.2)
        times.append(timed_stream(port))
        running = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/health"))["running"]
        assert running == len(neighbours), f"{running} neighbours still running: one ended by itself"
        for s in others:
            s.close()
        while json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/health"))["running"]:
            time.sleep(0.05)
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    port = free_port()
    model = pathlib.Path(tempfile.mkdtemp()) / "tern-tiny.gguf"
    subprocess.run([str(TERN), "synth", "--like", "tern-tiny", "--name", "tern-tiny", "--context", "16384",
                    "--out", str(model)], check=True, capture_output=True)
    server = subprocess.Popen([str(TERN), "serve", "--addr", f"127.0.0.1:{port}", "--model", str(model)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health").read()
                break
            except OSError:
                time.sleep(0.1)
        def endless(stops):
            return {"model": "tern-tiny", "prompt": "Once upon a time", "stream": True,
                    "options": {"num_predict": 100000, "temperature": 0, "stop": stops}}

        # Strings the text never completes, each almost matching all along.
        stops = [" " * 255 + chr(0x41 + i) for i in range(16)]
        alone = median_with(port, [], args.rounds)
        plain = median_with(port, [endless([])] * 4, args.rounds)
        stopped = median_with(port, [endless(stops)] * 4, args.rounds)
        print(f"200-token stream alone:                         {alone * 1e3:8.1f} ms")
        print(f"beside 4 generations without stop strings:      {plain * 1e3:8.1f} ms")
        print(f"beside 4 generations with 16 x 256-byte stops:  {stopped * 1e3:8.1f} ms")
        print(f"cost of the stop strings to the neighbour:      {stopped / plain:8.2f}x")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    sys.exit(main())
