#!/usr/bin/env python3
"""The app layer's speed: a user with 1,000 chats lists a page (60 chats),
and a sign-in (one Argon2id hash), on SQLite and, when Debian's PostgreSQL
is installed, on PostgreSQL. Each is printed beside `GET /health` measured
in the same run (the cost of any request through a handler instance), as
p50/p90 over sequential requests on one kept-alive connection.

    scripts/bench-app.py [--chats 1000] [--requests 300]
"""

import argparse
import http.client
import json
import pathlib
import statistics
import sys
import tempfile
import time

from benchlib import ROOT, serving

sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from conftest import Postgres, postgres_bin  # noqa: E402

MODEL = ROOT / "models" / "tern-tiny.gguf"


class Client:
    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port)
        self.headers = {"Content-Type": "application/json"}

    def call(self, method, path, body=None):
        self.conn.request(method, path, None if body is None else json.dumps(body), self.headers)
        r = self.conn.getresponse()
        data = r.read()
        assert r.status == 200, (path, r.status, data[:200])
        return json.loads(data)

    def timed(self, n, method, path, body=None):
        times = []
        for _ in range(n):
            start = time.perf_counter()
            self.call(method, path, body)
            times.append((time.perf_counter() - start) * 1000)
        times.sort()
        return statistics.median(times), times[int(len(times) * 0.9)]


def run(name, args, chats, requests):
    with serving(MODEL, *args) as port:
        c = Client(port)
        user = c.call("POST", "/api/v1/auths/signup", {"name": "Bench", "email": "bench@example.com", "password": "pw"})
        c.headers["Authorization"] = f"Bearer {user['token']}"
        history = {"messages": {"a": {"id": "a", "role": "user", "content": "x" * 200}}, "currentId": "a"}
        start = time.perf_counter()
        for i in range(chats):
            c.call("POST", "/api/v1/chats/new", {"chat": {"title": f"chat {i}", "history": history}})
        create_ms = (time.perf_counter() - start) * 1000 / chats
        health = c.timed(requests, "GET", "/health")
        page = c.timed(requests, "GET", "/api/v1/chats/?page=1")
        assert len(c.call("GET", "/api/v1/chats/?page=1")) == 60
        signin = c.timed(max(requests // 10, 10), "POST", "/api/v1/auths/signin",
                         {"email": "bench@example.com", "password": "pw"})
    print(f"{name:<10} chat list page ({chats} chats) p50 {page[0]:.2f} ms  p90 {page[1]:.2f} ms  "
          f"= {page[0] / health[0]:.2f}x /health (p50 {health[0]:.2f} ms)")
    print(f"{name:<10} sign-in (Argon2id m=19 MiB t=2 p=1, in wasm) p50 {signin[0]:.1f} ms  p90 {signin[1]:.1f} ms; "
          f"new chat {create_ms:.2f} ms each")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=300)
    a = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run("sqlite", ["--data-dir", str(pathlib.Path(tmp) / "data")], a.chats, a.requests)
        if postgres_bin():
            pg = Postgres()
            try:
                run("postgres", ["--database-url", pg.new_database(), "--data-dir", str(pathlib.Path(tmp) / "pg")],
                    a.chats, a.requests)
            finally:
                pg.stop()
        else:
            print("postgres   skipped: Debian's postgresql is not installed")


if __name__ == "__main__":
    main()
