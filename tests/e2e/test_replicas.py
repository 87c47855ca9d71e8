"""Three `tern serve` replicas behind HAProxy (round-robin), sharing one
Redis (`--keyvalue`) and one PostgreSQL (`--database-url`), all started
here from Debian's packages (`.ci/run` installs redis-server and haproxy).
"""

import shutil
import signal
import threading
import time
import uuid

import httpx
import pytest

from conftest import HANDLER_WASM, HAProxy, Redis, Server, forged_job_id, free_port, synth

ADMIN_KEY = "replica-admin-key"
# Two tenants' API keys; requests carry the first unless they say otherwise.
KEY, OTHER_KEY = "replica-key-1", "replica-key-2"
AS_KEY = {"x-api-key": KEY}
REPLICAS = 3


class Cluster:
    def __init__(self, folder, postgres):
        self.folder = folder
        self.redis = Redis(folder)
        self.database_url = postgres.new_database()
        # A slow model of the bundled one's shape (random weights never end
        # a turn), so a generation is still running when a test acts on it.
        self.model = synth(folder, "replica", "--layers", "12")
        self.component = folder / "handler.wasm"
        shutil.copy(HANDLER_WASM, self.component)
        self.ports = [free_port() for _ in range(REPLICAS)]
        self.replicas = [self.start(i) for i in range(REPLICAS)]
        self.balancer = HAProxy(folder, self.ports)
        self.http = httpx.Client(base_url=self.balancer.base, timeout=60, headers=AS_KEY)

    def args(self):
        return ["--model", str(self.model), "--threads", "1", "--keyvalue", self.redis.url,
                "--database-url", self.database_url, "--component", str(self.component),
                "--admin-key", ADMIN_KEY, "--api-key", f"{KEY},{OTHER_KEY}", "--trusted-proxy", "127.0.0.1"]

    def start(self, i):
        return Server(self.args(), self.folder / f"replica{i}.log", ready_path="/ready", port=self.ports[i])

    def replica(self, i):
        return httpx.Client(base_url=f"http://127.0.0.1:{self.ports[i]}", timeout=60, headers=AS_KEY)

    def stop(self):
        self.http.close()
        self.balancer.stop()
        for r in self.replicas:
            if r.proc.poll() is None:
                r.stop()
        self.redis.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, postgres):
    c = Cluster(tmp_path_factory.mktemp("replicas"), postgres)
    yield c
    c.stop()


def greedy(content, **extra):
    return {"model": "replica", "messages": [{"role": "user", "content": content}], "max_tokens": 8,
            "temperature": 0, **extra}


def cache_stats(client):
    r = client.get("/api/cache-stats")
    assert r.status_code == 200, r.text
    return {k: v for k, v in r.json().items() if k != "hit_rate"}


def test_a_cached_answer_is_a_hit_on_whichever_replica_answers(cluster):
    body = greedy(f"Tell me of the sea {uuid.uuid4().hex[:8]}")
    first = cluster.http.post("/v1/chat/completions", json=body)
    assert first.status_code == 200 and first.headers["x-cache"] == "miss", first.text
    # Round-robin: the next requests go to the other replicas; each is a hit.
    for _ in range(REPLICAS):
        again = cluster.http.post("/v1/chat/completions", json=body)
        assert again.status_code == 200 and again.headers["x-cache"] == "hit", again.text
        assert again.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
    stats = [cache_stats(cluster.replica(i)) for i in range(REPLICAS)]
    assert stats[0] == stats[1] == stats[2], stats
    assert stats[0]["hits"] >= REPLICAS and stats[0]["entries"] >= 1, stats


def test_a_job_is_polled_and_cancelled_through_the_other_replicas(cluster):
    a, b, c = (cluster.replica(i) for i in range(REPLICAS))
    body = {"model": "replica", "messages": [{"role": "user", "content": "Go on"}], "max_tokens": 100000,
            "ignore_eos": True}
    submitted = a.post("/api/chat-queue", json=body)
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()["id"]
    # Asked at once on another replica: known, and it grows there.
    seen = b.get(f"/api/chat-queue/{job}").json()
    assert seen["status"] in ("queued", "running"), seen
    deadline = time.time() + 30
    while not b.get(f"/api/chat-queue/{job}").json().get("text"):
        assert time.time() < deadline, "the job's text never reached the other replica"
        time.sleep(0.1)
    # Another tenant gets 404 for it on every replica, to read and to
    # cancel, and it keeps running.
    for client in (a, b, c):
        for method in ("GET", "DELETE"):
            for id in (job, forged_job_id(job, OTHER_KEY)):
                r = client.request(method, f"/api/chat-queue/{id}", headers={"x-api-key": OTHER_KEY})
                assert r.status_code == 404, (method, id, r.text)
    assert b.get(f"/api/chat-queue/{job}").json()["status"] == "running"
    cancelled = c.delete(f"/api/chat-queue/{job}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    for client in (a, b, c):
        state = client.get(f"/api/chat-queue/{job}").json()
        assert state["status"] == "cancelled", state
    # The owner's engine stopped the generation.
    deadline = time.time() + 10
    while a.get("/health").json()["running"] != 0:
        assert time.time() < deadline, "the cancelled job kept running on its replica"
        time.sleep(0.05)
    # An unknown id is 404 everywhere.
    assert c.get("/api/chat-queue/job-ffffffffffffffff0000000000000000-0123456789abcdef").status_code == 404


def signup(client, name, email):
    r = client.post("/api/v1/auths/signup", json={"name": name, "email": email, "password": "pw-xxxxxxxx"})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def admin(cluster):
    return signup(cluster.replica(0), "Admin", "admin@example.com")


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def new_chat(client, token, title):
    chat = {"title": title, "history": {"messages": {}, "currentId": None}}
    r = client.post("/api/v1/chats/new", json={"chat": chat}, headers=bearer(token))
    assert r.status_code == 200, r.text
    return r.json()["id"]


def test_a_chat_saved_through_one_replica_is_listed_through_the_others(cluster, admin):
    chat = new_chat(cluster.replica(0), admin["token"], "Saved on A")
    for i in (1, 2):
        listed = cluster.replica(i).get("/api/v1/chats/", headers=bearer(admin["token"]))
        assert listed.status_code == 200, listed.text
        assert chat in [c["id"] for c in listed.json()], listed.json()
    # Signing out on one replica ends the session on all of them.
    other = cluster.replica(1).post("/api/v1/auths/signin",
                                    json={"email": "admin@example.com", "password": "pw-xxxxxxxx"}).json()
    assert cluster.replica(2).get("/api/v1/auths/", headers=bearer(other["token"])).status_code == 200
    assert cluster.replica(1).post("/api/v1/auths/signout", headers=bearer(other["token"])).status_code == 200
    assert cluster.replica(0).get("/api/v1/auths/", headers=bearer(other["token"])).status_code == 401


def test_failed_signins_count_per_client_behind_the_balancer(cluster, admin):
    """The balancer's own address is not the limit's key: one client that
    keeps failing is refused, another (a different X-Forwarded-For) is not."""
    wrong = {"email": "admin@example.com", "password": "wrong-password"}
    # Accounts get a lower limit than addresses; fail on many accounts.
    statuses = []
    for n in range(60):
        r = cluster.http.post("/api/v1/auths/signin", json={**wrong, "email": f"nobody{n}@example.com"},
                              headers={"X-Forwarded-For": "198.51.100.7"})
        statuses.append(r.status_code)
    assert 429 in statuses, statuses
    fresh = cluster.http.post("/api/v1/auths/signin", json={"email": "admin@example.com", "password": "pw-xxxxxxxx"},
                              headers={"X-Forwarded-For": "198.51.100.8"})
    assert fresh.status_code == 200, fresh.text


class Load:
    """Clients that stream chats through the balancer without pause, each
    request recorded as (start, end, outcome)."""

    def __init__(self, base, clients=4, body=None):
        self.base, self.stop_at = base, None
        self.body = body or {"model": "replica", "messages": [{"role": "user", "content": "Hi"}],
                             "max_tokens": 24, "ignore_eos": True, "stream": True}
        self.results, self.lock = [], threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]
        self.running = True
        for t in self.threads:
            t.start()

    def run(self):
        with httpx.Client(base_url=self.base, timeout=60, headers=AS_KEY) as client:
            while self.running:
                start = time.time()
                outcome = self.one(client)
                with self.lock:
                    self.results.append((start, time.time(), outcome))

    def one(self, client):
        try:
            with client.stream("POST", "/v1/chat/completions", json=self.body) as r:
                if r.status_code != 200:
                    return f"status {r.status_code}"
                done = False
                for line in r.iter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: ") and '"error"' in line:
                        return "error event"
                return "ok" if done else "cut"
        except httpx.HTTPError as e:
            return f"cut ({type(e).__name__})"

    def finish(self):
        self.running = False
        for t in self.threads:
            t.join(timeout=60)
        return self.results


def test_a_killed_replica_cuts_only_its_streams_and_rejoins(cluster, admin):
    before = new_chat(cluster.http, admin["token"], "Before the kill")
    # Streams of 200 tokens: each replica has one running most of the time.
    load = Load(cluster.balancer.base, body={"model": "replica", "messages": [{"role": "user", "content": "Hi"}],
                                             "max_tokens": 200, "ignore_eos": True, "stream": True})
    time.sleep(2)
    victim = cluster.replicas[1]
    killed_at = time.time()
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    dead_at = time.time()
    time.sleep(4)
    results = load.finish()
    after_kill = [r for r in results if r[0] > dead_at]
    failed = [r for r in after_kill if r[2] != "ok"]
    assert after_kill and not failed, failed
    cut = [r for r in results if r[2] != "ok"]
    # Streams were running on the victim when it died: their clients saw
    # the cut, and nothing else failed.
    assert cut and all(start < dead_at and killed_at <= end for start, end, _ in cut), (cut, len(results))
    # Committed data is all there.
    listed = cluster.http.get("/api/v1/chats/", headers=bearer(admin["token"])).json()
    assert before in [c["id"] for c in listed]
    # Restarted, it rejoins: the balancer sends it requests again.
    victim.log.close()
    cluster.replicas[1] = cluster.start(1)
    rejoined = cluster.replica(1)
    deadline = time.time() + 20
    while True:
        for _ in range(REPLICAS):
            assert cluster.http.post("/v1/chat/completions", json=greedy("Back?", max_tokens=2)).status_code == 200
        metrics = rejoined.get("/metrics/host").text
        if 'route="/v1/chat/completions"' in metrics:
            break
        assert time.time() < deadline, "the restarted replica got no requests from the balancer"
        time.sleep(0.3)


def test_redis_stopped_mid_load_costs_hits_not_answers(cluster):
    body = greedy(f"Cached while Redis comes and goes {uuid.uuid4().hex[:8]}")
    assert cluster.http.post("/v1/chat/completions", json=body).headers["x-cache"] == "miss"
    load = Load(cluster.balancer.base, clients=3, body={**body, "stream": True})
    time.sleep(1)
    cluster.redis.stop()
    stopped_at = time.time()
    time.sleep(3)
    during = []
    for _ in range(6):
        r = cluster.http.post("/v1/chat/completions", json=body)
        during.append((r.status_code, r.headers.get("x-cache")))
    cluster.redis.start()
    time.sleep(3)  # the replicas reconnect
    results = load.finish()
    assert all(outcome == "ok" for _, _, outcome in results), [r for r in results if r[2] != "ok"]
    assert any(start > stopped_at for start, _, _ in results)
    assert during == [(200, "miss")] * 6, during
    # Redis restarted empty: the next answer is stored, then it is a hit everywhere.
    deadline = time.time() + 20
    while cluster.http.post("/v1/chat/completions", json=body).headers["x-cache"] != "hit":
        assert time.time() < deadline, "no hits after Redis came back"
        time.sleep(0.3)
    for _ in range(REPLICAS):
        assert cluster.http.post("/v1/chat/completions", json=body).headers["x-cache"] == "hit"
    errors = [int(line.split()[-1]) for i in range(REPLICAS) for line in cluster.replica(i).get("/metrics/host").text
              .splitlines() if line.startswith("tern_keyvalue_errors_total ")]
    assert len(errors) == REPLICAS and sum(errors) > 0, errors


def marked(wasm: bytes, note: str) -> bytes:
    """The same component with a custom section appended: another digest,
    the same behaviour."""
    name, payload = b"tern-test-note", note.encode()
    content = bytes([len(name)]) + name + payload
    size, n = bytearray(), len(content)
    while True:
        byte, n = n & 0x7F, n >> 7
        size.append(byte | (0x80 if n else 0))
        if not n:
            break
    return wasm + b"\x00" + bytes(size) + content


def active_digest(client):
    r = client.get("/admin/component", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200, r.text
    return r.json()["digest"]


def test_a_handler_upload_reaches_every_replica_under_load(cluster):
    old = {active_digest(cluster.replica(i)) for i in range(REPLICAS)}
    assert len(old) == 1
    load = Load(cluster.balancer.base)
    time.sleep(1)
    wasm = marked(HANDLER_WASM.read_bytes(), uuid.uuid4().hex)
    r = cluster.replica(0).post("/admin/component", content=wasm,
                                headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=300)
    assert r.status_code == 200, r.text
    new = r.json()["digest"]
    assert r.json()["file"] == {"path": str(cluster.component), "written": True}
    deadline = time.time() + 240
    while {active_digest(cluster.replica(i)) for i in range(REPLICAS)} != {new}:
        assert time.time() < deadline, "the upload did not reach every replica"
        time.sleep(0.2)
    time.sleep(1)
    results = load.finish()
    assert results and all(outcome == "ok" for _, _, outcome in results), [r for r in results if r[2] != "ok"]
    assert cluster.component.read_bytes() == wasm


def test_ready_waits_for_redis_and_postgres_at_start(cluster, postgres, tmp_path):
    """A replica started before its PostgreSQL and Redis answer reports not
    ready (so the balancer sends it nothing) and becomes ready once they do."""
    name = f"late{uuid.uuid4().hex[:8]}"
    url = f"postgres://tern@/{name}?host={postgres.socket}"
    s = Server(["--model", str(cluster.model), "--threads", "1", "--database-url", url], tmp_path / "early.log")
    try:
        status = s.json("GET", "/ready")
        assert status[0] == 503 and status[2]["status"] == "waiting for the database", status
        # Meanwhile the app answers a clear 503 and the model APIs work.
        code, _, body = s.json("GET", "/api/config")
        assert code == 503, body
        code, _, body = s.json("POST", "/v1/chat/completions", greedy("Hi", max_tokens=2))
        assert code == 200, body
        postgres.sql("postgres", f"CREATE DATABASE {name}")
        s.wait_healthy(path="/ready", timeout=20)
        code, _, body = s.json("GET", "/api/config")
        assert code == 200 and body["onboarding"] is True, body
    finally:
        s.stop()
    late = Redis(tmp_path, start=False)
    args = cluster.args()
    args[args.index("--keyvalue") + 1] = late.url
    s = Server(args, tmp_path / "early-redis.log")
    try:
        status = s.json("GET", "/ready")
        assert status[0] == 503 and status[2]["status"] == "waiting for redis", status
        late.start()
        s.wait_healthy(path="/ready", timeout=20)
    finally:
        s.stop()
        late.stop()
