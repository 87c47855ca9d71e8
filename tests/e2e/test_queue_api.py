"""Detached jobs (`/api/chat-queue`), `/batch` and `/metrics` against a real server."""

import time

import pytest

from conftest import Server, synth


def submit(server, content, **extra):
    """POSTs a job (no model: the engine's first) and returns its 202 body."""
    status, _, job = server.json("POST", "/api/chat-queue", {"messages": [{"role": "user", "content": content}], **extra})
    assert status == 202, job
    return job


def poll(server, job_id, until, timeout=30):
    """GETs the job until its status is one of `until`; returns its last state."""
    deadline = time.time() + timeout
    while True:
        status, _, state = server.json("GET", f"/api/chat-queue/{job_id}")
        assert status == 200, state
        if state["status"] in until:
            return state
        assert state["status"] in ("queued", "running"), state
        assert time.time() < deadline, f"job still {state['status']} after {timeout} s"
        time.sleep(0.02)


def test_a_queued_job_runs_to_the_end_and_reports_its_text(server, model_id):
    job = submit(server, "Speak", max_tokens=8)
    assert job["id"]
    assert job["status"] in ("queued", "running", "done")
    assert job["position"] >= 0 and job["estimated_wait_ms"] >= 0
    assert job["created_at"] >= time.time() - 3600
    state = poll(server, job["id"], ("done",))
    assert state["model"] == model_id
    assert state["finish_reason"] in ("stop", "length")
    assert state["text"]
    usage = state["usage"]
    assert 1 <= usage["completion_tokens"] <= 8
    assert usage["prompt_tokens"] == state["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] >= 0
    assert "position" not in state and "error" not in state


def test_a_queued_job_is_validated_like_a_chat_completion(server):
    for extra, param in [({"priority": "urgent"}, "priority"), ({"max_tokens": 0}, "max_tokens"),
                         ({"messages": []}, "messages"), ({"stream": True}, "stream")]:
        body = {"messages": [{"role": "user", "content": "Hi"}], **extra}
        status, _, error = server.json("POST", "/api/chat-queue", body)
        assert status == 400, (extra, error)
        assert error["error"]["param"] == param


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory):
    """A model slow enough (48 layers) that a long job is surely still going
    when the test cancels it."""
    tmp = tmp_path_factory.mktemp("slow")
    s = Server(["--model", str(synth(tmp, "slow", "--layers", "48", "--context", "4096"))], tmp / "serve.log")
    yield s
    s.stop()


def test_cancelling_a_long_job_stops_it(slow_server):
    job = submit(slow_server, "Go on", max_tokens=100000, ignore_eos=True)
    poll(slow_server, job["id"], ("running",))
    status, _, state = slow_server.json("DELETE", f"/api/chat-queue/{job['id']}")
    assert status == 200, state
    assert state["id"] == job["id"]
    assert state["status"] == "cancelled"
    assert "finish_reason" not in state
    # The job stays cancelled and its text stops growing.
    first = slow_server.json("GET", f"/api/chat-queue/{job['id']}")[2]
    time.sleep(0.2)
    second = slow_server.json("GET", f"/api/chat-queue/{job['id']}")[2]
    assert first["status"] == second["status"] == "cancelled"
    assert second["text"] == first["text"]
    deadline = time.time() + 2
    while slow_server.json("GET", "/health")[2]["running"] != 0:
        assert time.time() < deadline, "the cancelled job still runs"
        time.sleep(0.01)


def test_unknown_job_is_404(server):
    for method in ("GET", "DELETE"):
        status, _, body = server.json(method, "/api/chat-queue/job-nope")
        assert status == 404, body
        assert body["error"]["type"] == "not_found_error"
        assert body["error"]["code"] == "job_not_found"


def test_a_job_path_with_the_wrong_method_is_405(server):
    status, headers, body = server.json("PUT", "/api/chat-queue/job-nope")
    assert status == 405, body
    assert {k.lower(): v for k, v in headers.items()}["allow"] == "GET, DELETE"


def test_batch_runs_every_prompt(server):
    prompts = ["The king", "To be", "O Romeo", "Thou"]
    status, _, body = server.json("POST", "/batch", {"prompts": prompts, "max_tokens": 6, "temperature": 0})
    assert status == 200, body
    assert body["batch_size"] == 4
    results = body["results"]
    assert len(results) == 4
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    assert [r["prompt"] for r in results] == prompts
    for r in results:
        assert r["finish_reason"] in ("stop", "length")
        assert 1 <= r["completion_tokens"] <= 6 and r["prompt_tokens"] > 0 and r["cached_tokens"] >= 0
    assert body["total_time_ms"] > 0
    # Greedy answers are the same batched as alone, and in prompt order.
    for r in results:
        alone = server.json("POST", "/generate", {"prompt": r["prompt"], "max_tokens": 6, "temperature": 0})[2]
        assert r["text"] == alone["text"], r["prompt"]


def test_batch_over_the_limit_is_400(server):
    # `tern serve` allows 32 prompts unless --max-batch says otherwise.
    status, _, body = server.json("POST", "/batch", {"prompts": ["x"] * 33})
    assert status == 400, body
    assert body["error"]["param"] == "prompts"
    assert "32" in body["error"]["message"]
    status, _, body = server.json("POST", "/batch", {"prompts": ["x", 2]})
    assert status == 400 and body["error"]["param"] == "prompts[1]"


def histogram(lines, family):
    """(le, cumulative count) pairs of one histogram family."""
    prefix = f'{family}_bucket{{le="'
    return [(l[len(prefix):].split('"')[0], int(l.split()[-1])) for l in lines if l.startswith(prefix)]


def test_metrics_expose_the_scheduler(server):
    server.json("POST", "/generate", {"prompt": "The king", "max_tokens": 3})
    # Scrapers ask for text; without that, /metrics answers JSON.
    status, headers, raw = server.request("GET", "/metrics", headers={"Accept": "text/plain; version=0.0.4"})
    assert status == 200
    assert {k.lower(): v for k, v in headers.items()}["content-type"].startswith("text/plain; version=0.0.4")
    lines = raw.decode().splitlines()
    assert "tern_ready 1" in lines
    assert any(l.startswith("tern_requests_running ") for l in lines)
    assert "# TYPE tern_requests_total counter" in lines
    for family in ("tern_time_to_first_token_seconds", "tern_inter_token_latency_seconds",
                   "tern_request_queue_time_seconds", "tern_e2e_request_latency_seconds"):
        assert f"# TYPE {family} histogram" in lines
        buckets = histogram(lines, family)
        assert buckets[-1][0] == "+Inf"
        counts = [c for _, c in buckets]
        assert counts == sorted(counts), f"{family} buckets are cumulative"
        count = next(int(l.split()[1]) for l in lines if l.startswith(f"{family}_count "))
        assert counts[-1] == count
    ttft = next(int(l.split()[1]) for l in lines if l.startswith("tern_time_to_first_token_seconds_count "))
    assert ttft >= 1
