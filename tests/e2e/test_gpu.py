"""`tern serve --device gpu|auto` with the official clients, on whatever
adapter the machine has; in CI, Mesa's lavapipe (a software Vulkan driver,
which `--device gpu` takes and `auto` never does). Without a Vulkan driver
the tests that need one skip, saying so, or fail under CI."""

import glob
import os
import subprocess

import ollama
import openai
import pytest

from conftest import BUNDLED, Server, tern_binary

LAVAPIPE = sorted(glob.glob("/usr/share/vulkan/icd.d/lvp_icd.*.json"))
DRIVERS = glob.glob("/usr/share/vulkan/icd.d/*.json") + glob.glob("/etc/vulkan/icd.d/*.json")
PROMPT = [{"role": "user", "content": "Speak of the king."}]


def need_vulkan(lavapipe=False):
    if not (LAVAPIPE if lavapipe else DRIVERS):
        why = "no Vulkan driver here (Debian's mesa-vulkan-drivers gives lavapipe)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="module")
def gpu_server(tmp_path_factory):
    need_vulkan()
    s = Server(["--device", "gpu", "--kv-memory-mib", "64"], tmp_path_factory.mktemp("gpu") / "serve.log")
    yield s
    s.stop()


def greedy(base, stream=False):
    client = openai.OpenAI(base_url=base + "/v1", api_key="none")
    args = dict(model="tern-tiny", messages=PROMPT, max_tokens=24, temperature=0, seed=1)
    if not stream:
        return client.chat.completions.create(**args).choices[0].message.content
    return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **args))


def test_answers_on_the_gpu_are_the_cpus(gpu_server, server):
    assert BUNDLED.exists()
    on_gpu = greedy(gpu_server.base)
    assert on_gpu and on_gpu == greedy(server.base)
    assert greedy(gpu_server.base, stream=True) == on_gpu


def test_the_device_is_reported_by_props_ps_models_and_metrics(gpu_server, server):
    _, _, props = gpu_server.json("GET", "/props")
    assert props["device"].startswith("gpu "), props
    _, _, cpu_props = server.json("GET", "/props")
    assert cpu_props["device"].startswith("cpu "), cpu_props
    running = ollama.Client(host=gpu_server.base).ps().models
    assert running[0].size_vram > 1_000_000, running
    _, _, models = gpu_server.json("GET", "/v1/models")
    assert models["data"][0]["device"] == props["device"]
    status, _, raw = gpu_server.request("GET", "/metrics", headers={"Accept": "text/plain"})
    text = raw.decode()
    assert status == 200
    assert f'tern_model_info{{model="tern-tiny",device="{props["device"]}"}} 1' in text, text[-800:]
    vram = [l for l in text.splitlines() if l.startswith('tern_model_device_memory_bytes{model="tern-tiny"}')]
    assert vram and int(vram[0].split()[-1]) == running[0].size_vram


def serve_exit(env, *args, timeout=60):
    """`tern serve` that is expected to stop by itself: (exit code, output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TERN_")} | env
    r = subprocess.run(
        [str(tern_binary()), "serve", "--addr", "127.0.0.1:1", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    return r.returncode, r.stdout + r.stderr


def test_gpu_without_any_adapter_is_one_clear_error_at_start():
    code, out = serve_exit({"VK_ICD_FILENAMES": "/nonexistent/icd.json"}, "--device", "gpu")
    assert code != 0
    assert "--device gpu: no GPU adapter: no Vulkan, Metal or DX12 adapter was found" in out, out[-2000:]
    assert "listening" not in out


def test_auto_never_takes_a_software_adapter(tmp_path):
    need_vulkan(lavapipe=True)
    # Only lavapipe is visible: auto must run on the CPU and say why.
    s = Server(["--device", "auto"], tmp_path / "serve.log", env={"VK_ICD_FILENAMES": LAVAPIPE[0]})
    try:
        _, _, props = s.json("GET", "/props")
        assert props["device"].startswith("cpu "), props
        log = s.log_path.read_text()
        assert "running on the CPU" in log and "only software adapters were found" in log, log[-2000:]
    finally:
        s.stop()
