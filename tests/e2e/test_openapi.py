"""schemathesis against `/openapi.json`: generated requests to every route of a
running `tern serve` (the small fixture model, so generations stay short)
must never get a 5xx, and every response must match the documented status,
content type and schema."""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import FIXTURE, Server


@pytest.fixture(scope="module")
def fixture_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openapi")
    s = Server(["--model", str(FIXTURE)], tmp / "serve.log")
    yield s
    s.stop()


def test_openapi_document_lists_every_api_family(server):
    status, headers, doc = server.json("GET", "/openapi.json")
    assert status == 200
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/api/chat", "/api/generate",
                 "/completion", "/api/chat-optimized", "/api/cache-stats", "/infer", "/metrics", "/"):
        assert path in doc["paths"], path


def test_schemathesis_finds_no_server_errors_or_schema_violations(fixture_server, tmp_path):
    exe = shutil.which("schemathesis") or shutil.which("st")
    cmd = [exe] if exe else [sys.executable, "-m", "schemathesis.cli"]
    run = subprocess.run(
        [*cmd, "run", f"{fixture_server.base}/openapi.json",
         "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
         "--max-examples", "15", "--seed", "1"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,  # its cache stays out of the tree
    )
    print(run.stdout[-4000:])
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    # At least 500 requests were generated and sent ("Test cases: N generated, ...").
    summary = [line for line in run.stdout.splitlines() if " generated" in line]
    assert summary, run.stdout[-2000:]
    count = int(summary[-1].split()[0])
    assert count >= 500, summary[-1]


def test_the_served_document_is_the_generators_output(server):
    from conftest import ROOT

    generated = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-openapi.py")],
                               capture_output=True, text=True, check=True).stdout
    assert server.json("GET", "/openapi.json")[2] == json.loads(generated)
