#!/usr/bin/env python3
"""Time to first byte of response-cache hits on /api/chat-optimized.

Primes one answer, checks the next identical request is a hit, then times
N hits and, interleaved with them as the baseline, N `GET /health` on a
second keep-alive connection: the cost of a hit over the cheapest route the
same server answers. Time to first byte is from sending the request to the
status line and headers being parsed (`getresponse()` returning); each
body is read whole so the connection can be reused.

    tern serve &   # or any running server
    python3 scripts/bench-cache.py --url http://127.0.0.1:8080 -n 1000
"""

import argparse
import http.client
import json
import time
import urllib.parse

# The budget a hit must stay under, and the figure it aims for.
TARGET_P50_MS = 5.0
AIM_P50_MS = 1.0


def timed(conn, method, path, body=None):
    """(ms to first byte, ms to the end of the body, response headers, body) of one request."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    start = time.perf_counter_ns()
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    first = time.perf_counter_ns()
    data = response.read()
    end = time.perf_counter_ns()
    if response.status != 200:
        raise SystemExit(f"{method} {path} answered {response.status}: {data[:200]!r}")
    return (first - start) / 1e6, (end - start) / 1e6, response, data


def percentile(sorted_ms, p):
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * p))]


def summary(name, samples):
    s = sorted(samples)
    return f"{name}: p50 {percentile(s, 0.50):.3f} ms, p99 {percentile(s, 0.99):.3f} ms, max {s[-1]:.3f} ms"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("-n", type=int, default=1000, help="hits (and /health requests) to time")
    parser.add_argument("--max-tokens", type=int, default=32, help="length of the cached answer")
    args = parser.parse_args()

    url = urllib.parse.urlsplit(args.url)
    chat = http.client.HTTPConnection(url.hostname, url.port or 80)
    health = http.client.HTTPConnection(url.hostname, url.port or 80)
    body = json.dumps({"message": "Tell me of the king.", "max_tokens": args.max_tokens, "temperature": 0})

    timed(chat, "POST", "/api/chat-optimized", body)
    _, _, response, data = timed(chat, "POST", "/api/chat-optimized", body)
    if response.getheader("x-cache") != "hit":
        raise SystemExit(f"the second identical request was not a hit: x-cache {response.getheader('x-cache')}")
    text = "".join(json.loads(e[6:]).get("content", "") for e in data.decode().split("\n\n") if e.startswith("data: "))
    for _ in range(20):
        timed(health, "GET", "/health")
        timed(chat, "POST", "/api/chat-optimized", body)

    hit_first, hit_total, health_first = [], [], []
    for _ in range(args.n):
        first, total, response, _ = timed(chat, "POST", "/api/chat-optimized", body)
        if response.getheader("x-cache") != "hit":
            raise SystemExit("a timed request missed the cache")
        hit_first.append(first)
        hit_total.append(total)
        health_first.append(timed(health, "GET", "/health")[0])

    hit_p50 = percentile(sorted(hit_first), 0.5)
    health_p50 = percentile(sorted(health_first), 0.5)
    print(f"{args.n} cache hits of a {len(text)}-character answer on /api/chat-optimized, keep-alive")
    print(summary("hit time to first byte", hit_first))
    print(summary("hit whole response   ", hit_total))
    print(summary("GET /health baseline  ", health_first))
    verdict = "met" if hit_p50 < TARGET_P50_MS else "MISSED"
    print(
        f"hit p50 {hit_p50:.3f} ms = {hit_p50 - health_p50:+.3f} ms over /health; "
        f"target p50 < {TARGET_P50_MS} ms {verdict}, aim < {AIM_P50_MS} ms "
        f"{'met' if hit_p50 < AIM_P50_MS else 'not met'}"
    )


if __name__ == "__main__":
    main()
