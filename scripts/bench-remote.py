#!/usr/bin/env python3
"""What the remote adapter's hop costs: the handler composed with it
(`tern compose`) on stock `wasmtime serve`, in front of a `tern serve`,
against the same `tern serve` asked directly, in the same run. p50 over
sequential requests on one kept-alive connection each:

- `GET /v1/models` (one upstream round trip and nothing else);
- a whole sampled chat of 16 tokens from the bundled model;
- the first byte of the same chat streamed.

    scripts/bench-remote.py [--requests 100]
"""

import argparse
import http.client
import json
import statistics
import subprocess
import tempfile
import time

from benchlib import ROOT, TERN, serving, wasmtime_serving

MODEL = ROOT / "models" / "tern-tiny.gguf"
# Sampled (no seed), so neither path is answered from a response cache;
# `ignore_eos` keeps every answer 16 tokens long.
CHAT = {"model": "tern-tiny", "messages": [{"role": "user", "content": "Speak of the king."}], "max_tokens": 16,
        "temperature": 0.7, "ignore_eos": True}


def timed(port, n, method, path, body=None, first_byte=False):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        conn.request(method, path, None if body is None else json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        if first_byte:
            r.read(1)
            times.append((time.perf_counter() - start) * 1000)
            r.read()
        else:
            r.read()
            times.append((time.perf_counter() - start) * 1000)
        assert r.status == 200, r.status
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    n = parser.parse_args().requests
    with tempfile.TemporaryDirectory() as tmp, serving(MODEL, "--data-dir", f"{tmp}/data") as upstream:
        composed = f"{tmp}/tern-remote.wasm"
        subprocess.run([str(TERN), "compose", "-o", composed], check=True, capture_output=True)
        with wasmtime_serving(composed, "--env", f"TERN_UPSTREAM=http://127.0.0.1:{upstream}") as port:
            stream = {**CHAT, "stream": True}
            rows = [
                ("GET /v1/models", "GET", "/v1/models", None, False),
                ("chat, 16 tokens, whole", "POST", "/v1/chat/completions", CHAT, False),
                ("chat, streamed, first byte", "POST", "/v1/chat/completions", stream, True),
            ]
            print(f"{'p50 over ' + str(n):<28} {'direct':>9} {'via adapter':>12} {'hop':>9} {'ratio':>6}")
            for name, method, path, body, first in rows:
                direct = timed(upstream, n, method, path, body, first)
                hop = timed(port, n, method, path, body, first)
                print(f"{name:<28} {direct:>7.2f}ms {hop:>10.2f}ms {hop - direct:>7.2f}ms {hop / direct:>5.2f}x")


if __name__ == "__main__":
    main()
