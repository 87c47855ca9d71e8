#!/usr/bin/env python3
"""The local component (handler + engine + bundled model in one wasm file,
built by scripts/dist) on stock `wasmtime serve`, against native `tern
serve` on the same model in the same run: decode and prefill tokens per
second as the engine times them, and time to first token as a client sees
it (for `wasmtime serve` that includes making a fresh instance and loading
the model, which it does for every request). Native runs with one thread
(the component has one) and with the default. Medians over --requests
distinct prompts (no prefix or response cache helps either side).

    scripts/bench-local.py [--requests 5] [--reference]

--reference also builds the local adapter without simd128 (the kernels'
portable reference) and measures it, to show what the simd128 variant buys.
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import tempfile
import time

from benchlib import ROOT, TERN, serving, wasmtime_serving

MODEL = ROOT / "models" / "tern-tiny.gguf"
DECODE_TOKENS = 256
# About 400 tokens of the bundled model's 512-token context.
LONG_PROMPT = "The king hath sent to know the nature of your griefs, and whereupon you conjure from the breast of peace. " * 17


def request(port, body, stream=False):
    """Answer JSON, or (seconds to the first text, last event) when streamed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    start = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps({**body, "stream": stream}),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200, (r.status, r.read())
    if not stream:
        return json.loads(r.read())
    first = None
    for line in r:
        if line.startswith(b"data: {") and first is None and json.loads(line[6:])["choices"][0].get("text"):
            first = time.perf_counter() - start
    return first


def measure(port, n):
    decode, prefill, ttft = [], [], []
    for i in range(n):
        a = request(port, {"model": "tern-tiny", "prompt": f"{i} The king", "max_tokens": DECODE_TOKENS,
                           "temperature": 0, "ignore_eos": True})
        decode.append(a["timings"]["predicted_per_second"])
        b = request(port, {"model": "tern-tiny", "prompt": f"{i} {LONG_PROMPT}", "max_tokens": 1, "temperature": 0})
        prefill.append(b["timings"]["prompt_per_second"])
        ttft.append(request(port, {"model": "tern-tiny", "prompt": f"{i} Speak of the king.", "max_tokens": 4,
                                   "temperature": 0}, stream=True) * 1000)
    prompt_tokens = b["usage"]["prompt_tokens"]
    return statistics.median(decode), statistics.median(prefill), statistics.median(ttft), prompt_tokens


def reference_component(tmp):
    """The local composition with the kernels' reference variant (no simd128)."""
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    build = f"{target}/dist-build-reference"
    env = {**os.environ, "CARGO_PROFILE_RELEASE_DEBUG": "false", "CARGO_PROFILE_RELEASE_STRIP": "true"}
    subprocess.run(["cargo", "build", "--release", "-p", "tern-local", "--target", "wasm32-wasip2", "--target-dir",
                    build], cwd=ROOT, env=env, check=True, capture_output=True)
    out = f"{tmp}/tern-local-reference.wasm"
    subprocess.run([str(TERN), "compose", "--adapter", f"{build}/wasm32-wasip2/release/tern_local.wasm", "-o", out],
                   cwd=ROOT, check=True, capture_output=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--reference", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([str(ROOT / "scripts" / "dist"), tmp], check=True, capture_output=True)
        rows = []
        for threads in ["1", "2"]:
            with serving(MODEL, "--threads", threads, "--data-dir", f"{tmp}/data{threads}") as port:
                rows.append((f"native tern serve, {threads} thread(s)", measure(port, args.requests)))
        with wasmtime_serving(f"{tmp}/tern-local.wasm") as port:
            rows.append(("wasmtime serve tern-local.wasm (simd128)", measure(port, args.requests)))
        if args.reference:
            with wasmtime_serving(reference_component(tmp)) as port:
                rows.append(("wasmtime serve, reference kernels", measure(port, args.requests)))
    base = rows[0][1]
    print(f"medians over {args.requests} requests; decode {DECODE_TOKENS} tokens, prefill {base[3]} tokens")
    print(f"{'':<42} {'decode tok/s':>12} {'prefill tok/s':>13} {'TTFT ms':>8}   ratios to native 1 thread")
    for name, (decode, prefill, ttft, _) in rows:
        print(f"{name:<42} {decode:>12.1f} {prefill:>13.1f} {ttft:>8.1f}   "
              f"decode {decode / base[0]:.2f}x, prefill {prefill / base[1]:.2f}x, TTFT {ttft / base[2]:.2f}x")


if __name__ == "__main__":
    main()
