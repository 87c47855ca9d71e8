#!/usr/bin/env python3
"""Open WebUI's frontend on tern against the same frontend on Open WebUI's
own Python backend: time from pressing Enter to the answer's first text on
the page, and the resident memory of the server process with the page open.

    scripts/bench-webui.py [--runs 5] [--open-webui VENV]

tern: `tern serve --webui target/webui` (scripts/fetch-webui first), the
bundled model. Open WebUI: with `--open-webui VENV` (a virtualenv where
`pip install open-webui==0.12.4` ran), `VENV/bin/open-webui serve`, offline,
with the same tern as its OpenAI-compatible model server, so both answer
with the same model and the difference is the backend between the page and
the engine. Its RSS counts the Python process and its children; tern's,
the one process that also holds the model. Headless Chromium, one user,
a new chat per run, answers of 32 tokens (`max_tokens`, `ignore_eos`).
"""

import argparse
import os
import pathlib
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time

import httpx
from playwright.sync_api import sync_playwright

ROOT = pathlib.Path(__file__).resolve().parent.parent
TERN = ROOT / "target" / "release" / "tern"
PASSWORD = "correct horse battery"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url, proc, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not come up in {timeout} s")


def rss_mib(pid):
    """Resident memory of `pid` and its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = pathlib.Path(f"/proc/{p}/status").read_text()
            total += int(next(l for l in status.splitlines() if l.startswith("VmRSS:")).split()[1])
            children = pathlib.Path(f"/proc/{p}/task/{p}/children").read_text().split()
            todo += [int(c) for c in children]
        except (FileNotFoundError, StopIteration, ProcessLookupError):
            pass
    return total / 1024


def measure(browser, base, pid, runs, model):
    """(first-text times in ms, RSS in MiB with the page open)."""
    r = httpx.post(base + "/api/v1/auths/signup", json={"name": "Bench", "email": "bench@example.com", "password": PASSWORD}, timeout=60)
    r.raise_for_status()
    token = r.json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    settings = {"ui": {"params": {"max_tokens": 32, "ignore_eos": True}, "version": "0.12.4", "models": [model]}}
    httpx.post(base + "/api/v1/users/user/settings/update", json=settings, headers=headers, timeout=60).raise_for_status()
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.goto(base + "/auth")
    page.evaluate(f"localStorage.token = {token!r}")
    times = []
    for i in range(runs + 1):
        page.goto(base + "/")
        if i == 0:
            # The release notes an admin sees once.
            try:
                page.get_by_role("button", name="Okay, Let's Go!").click(timeout=15_000)
            except Exception:  # noqa: BLE001 - not always shown
                pass
        page.locator("#chat-input").wait_for(timeout=120_000)
        page.locator("#chat-input").click()
        page.keyboard.type(f"Speak of the king, {i}.")
        page.evaluate(
            """() => { window.firstText = null;
            new MutationObserver((_, o) => { const e = document.querySelector('.chat-assistant #response-content-container');
              if (e && e.innerText.trim() && window.firstText === null) { window.firstText = performance.now(); o.disconnect(); } })
            .observe(document.body, {subtree: true, childList: true, characterData: true});
            window.sentAt = performance.now(); }"""
        )
        page.keyboard.press("Enter")
        page.wait_for_function("window.firstText !== null", timeout=120_000)
        elapsed = page.evaluate("window.firstText - window.sentAt")
        if i > 0:  # the first run warms caches on both sides
            times.append(elapsed)
        page.locator(".copy-response-button").first.wait_for(timeout=120_000)
    rss = rss_mib(pid)
    page.close()
    return times, rss


def report(name, times, rss):
    print(
        f"{name:<28} first text {statistics.median(times):7.1f} ms median "
        f"(min {min(times):.1f}, max {max(times):.1f}, {len(times)} runs)   RSS {rss:7.1f} MiB"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--open-webui", type=pathlib.Path, help="a virtualenv with open-webui==0.12.4 installed")
    args = ap.parse_args()
    webui = subprocess.run([str(ROOT / "scripts" / "fetch-webui")], check=True, capture_output=True, text=True, cwd=ROOT)
    webui = ROOT / webui.stdout.strip().splitlines()[-1]
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="tern-bench-webui-"))
    procs = []
    try:
        port = free_port()
        tern_base = f"http://127.0.0.1:{port}"
        tern = subprocess.Popen(
            [str(TERN), "serve", "--addr", f"127.0.0.1:{port}", "--webui", str(webui), "--data-dir", str(tmp / "tern")],
            stdout=open(tmp / "tern.log", "w"), stderr=subprocess.STDOUT,
        )
        procs.append(tern)
        wait_up(tern_base + "/health", tern)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
            times, rss = measure(browser, tern_base, tern.pid, args.runs, "tern-tiny")
            report("tern serve --webui", times, rss)
            if args.open_webui:
                oport = free_port()
                env = {
                    **os.environ,
                    "DATA_DIR": str(tmp / "open-webui"),
                    "PORT": str(oport),
                    "ENABLE_OLLAMA_API": "false",
                    "OPENAI_API_BASE_URL": tern_base + "/v1",
                    "OPENAI_API_KEY": "none",
                    "OFFLINE_MODE": "true",
                    "HF_HUB_OFFLINE": "1",
                    "RAG_EMBEDDING_MODEL_AUTO_UPDATE": "false",
                    "ENABLE_WEBSOCKET_SUPPORT": "true",
                    "WEBUI_SECRET_KEY": "bench",
                }
                (tmp / "open-webui").mkdir()
                owui = subprocess.Popen(
                    [str(args.open_webui / "bin" / "open-webui"), "serve", "--host", "127.0.0.1", "--port", str(oport)],
                    stdout=open(tmp / "open-webui.log", "w"), stderr=subprocess.STDOUT, env=env,
                    start_new_session=True,
                )
                procs.append(owui)
                wait_up(f"http://127.0.0.1:{oport}/health", owui)
                times, rss = measure(browser, f"http://127.0.0.1:{oport}", owui.pid, args.runs, "tern-tiny")
                report("Open WebUI 0.12.4 (Python)", times, rss)
                print(f"   (its RSS is the Python backend's alone; the model is in tern's {rss_mib(tern.pid):.1f} MiB)")
            browser.close()
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM) if proc is not procs[0] else proc.terminate()
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
