#!/usr/bin/env python3
"""Cached answers across replicas: one identical greedy chat, answered from
the response cache, measured

- one request at a time (p50/p90 over one kept-alive connection): one
  replica with its memory store, one replica on Redis, and three replicas
  on Redis behind HAProxy (with `GET /health` through HAProxy beside it:
  the balancer's own hop);
- as aggregate requests per second under `wrk` (Debian's package), with 1
  and 3 replicas behind HAProxy on Redis, and one replica alone.

Every figure comes from the same run; on a machine with fewer cores than
replicas plus balancer plus Redis plus load generator, three replicas share
the same cores, and the ratio says how much that costs or gains.

    scripts/bench-replicas.py [--requests 500] [--seconds 10] [--connections 16]
"""

import argparse
import http.client
import json
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import ROOT

sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from conftest import HAProxy, Redis, Server  # noqa: E402

MODEL = ROOT / "models" / "tern-tiny.gguf"
CHAT = {"model": "tern-tiny", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 16,
        "temperature": 0}


def latency(port, n, method="POST", path="/v1/chat/completions", body=CHAT):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    payload, headers = json.dumps(body).encode() if body else None, {"Content-Type": "application/json"}
    times = []
    for i in range(n + 10):
        start = time.perf_counter()
        conn.request(method, path, payload, headers)
        r = conn.getresponse()
        r.read()
        assert r.status == 200, r.status
        if path == "/v1/chat/completions" and i > 0:
            assert r.getheader("x-cache") == "hit", r.getheader("x-cache")
        if i >= 10:  # the first ones warm the cache and the instances
            times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9)]


def throughput(port, seconds, connections, folder):
    script = folder / "chat.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(CHAT))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script),
                          f"http://127.0.0.1:{port}/v1/chat/completions"], capture_output=True, text=True, check=True)
    rate = next(line for line in out.stdout.splitlines() if line.startswith("Requests/sec:"))
    errors = [line.strip() for line in out.stdout.splitlines() if "Non-2xx" in line or "Socket errors" in line]
    assert not errors, errors
    return float(rate.split()[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    for program in ("redis-server", "haproxy", "wrk"):
        if shutil.which(program) is None:
            sys.exit(f"{program} is missing (Debian package {program})")
    folder = pathlib.Path(tempfile.mkdtemp(prefix="tern-bench-replicas-"))
    redis = Redis(folder)
    common = ["--model", str(MODEL), "--trusted-proxy", "127.0.0.1"]
    servers = []
    try:
        alone = Server(common, folder / "alone.log")
        servers.append(alone)
        shared = [Server([*common, "--keyvalue", redis.url], folder / f"r{i}.log", ready_path="/ready")
                  for i in range(3)]
        servers += shared
        for name in ("one", "three"):
            (folder / name).mkdir()
        one_lb = HAProxy(folder / "one", [shared[0].port])
        three_lb = HAProxy(folder / "three", [s.port for s in shared])

        rows = [
            ("1 replica, memory store, direct", latency(alone.port, args.requests)),
            ("1 replica, Redis, direct", latency(shared[0].port, args.requests)),
            ("3 replicas, Redis, through HAProxy", latency(three_lb.port, args.requests)),
            ("GET /health through HAProxy", latency(three_lb.port, args.requests, "GET", "/health", None)),
        ]
        base = rows[0][1][0]
        print(f"cache hit, one request at a time ({args.requests} requests)")
        for name, (p50, p90) in rows:
            print(f"  {name:38} p50 {p50:6.2f} ms  p90 {p90:6.2f} ms  ({p50 / base:4.2f}x the memory store)")
        print(f"cached answers per second (wrk -t2 -c{args.connections} -d{args.seconds}s)")
        alone_rate = throughput(alone.port, args.seconds, args.connections, folder)
        one_rate = throughput(one_lb.port, args.seconds, args.connections, folder)
        three_rate = throughput(three_lb.port, args.seconds, args.connections, folder)
        print(f"  1 replica, memory store, direct      {alone_rate:8.0f} req/s")
        print(f"  1 replica, Redis, through HAProxy    {one_rate:8.0f} req/s  ({one_rate / alone_rate:4.2f}x direct)")
        print(f"  3 replicas, Redis, through HAProxy   {three_rate:8.0f} req/s  ({three_rate / one_rate:4.2f}x 1 replica)")
        one_lb.stop()
        three_lb.stop()
    finally:
        for s in servers:
            s.stop()
        redis.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
