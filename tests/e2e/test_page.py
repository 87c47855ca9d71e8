"""The chat page at `/`, in headless Chromium: pick the model, type, press
Enter, and watch the answer stream in with its speed; plus the plain HTTP
answers of `/` and `/static/`.

Chromium is Debian's (`/usr/bin/chromium`, or $CHROMIUM); Playwright drives
it without a browser download of its own. Outside CI the browser tests skip
with the reason when Chromium cannot be launched; in CI they must run.
"""

import json
import os
import pathlib
import re
import time

import pytest

# A random-weight model of 48 layers: it rarely ends its turn and is slow
# enough that an answer is surely still streaming when Stop is pressed.
from test_queue_api import slow_server  # noqa: F401 - a fixture

ARTIFACTS = pathlib.Path(__file__).resolve().parent / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Generous: the first answer waits for the engine on a busy 2-core machine.
ANSWER_TIMEOUT_MS = 120_000


def unavailable(reason):
    if os.environ.get("CI"):
        pytest.fail(f"the browser tests must run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        unavailable(f"playwright is not installed ({e}); pip install -r tests/requirements.txt")
    with sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=CHROMIUM)
        except Exception as e:  # noqa: BLE001 - any launch failure means no browser here
            unavailable(f"Chromium cannot be launched from {CHROMIUM}: {e}")
        yield chromium
        chromium.close()


def open_page(browser, server):
    """The chat page of `server` in a new tab, and the list its script errors go to."""
    page = browser.new_page(viewport={"width": 960, "height": 720})
    problems = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    page.goto(server.base + "/")
    return page, problems


@pytest.fixture
def page(browser, server):
    page, problems = open_page(browser, server)
    yield page, problems
    page.close()


def chat_requests(page):
    """The JSON bodies of the chat completion requests the page sends."""
    sent = []
    page.on(
        "request",
        lambda r: r.url.endswith("/v1/chat/completions") and sent.append(json.loads(r.post_data or "{}")),
    )
    return sent


def ask(page, text):
    box = page.get_by_label("Message")
    box.fill(text)
    box.press("Enter")
    return page.locator("#log li.assistant").last


def test_chat_page_streams_an_answer_with_tokens_per_second(page, model_id):
    from playwright.sync_api import expect

    page, problems = page
    sent = chat_requests(page)
    page.get_by_label("Model").select_option(model_id)
    page.get_by_label("Max tokens").fill("24")

    answer = ask(page, "Once upon a time")
    expect(answer.locator(".text")).not_to_have_text("", timeout=ANSWER_TIMEOUT_MS)
    meta = answer.locator(".meta")
    expect(meta).to_contain_text("tokens/s", timeout=ANSWER_TIMEOUT_MS)
    line = meta.inner_text()
    rate = re.search(r"([\d.]+) tokens/s", line)
    assert rate and float(rate.group(1)) > 0, line
    assert re.search(r"\bcached\b", line), line

    # The second turn carries the first question and answer.
    first = answer.locator(".text").inner_text()
    second = ask(page, "And then?")
    expect(second.locator(".meta")).to_contain_text("tokens/s", timeout=ANSWER_TIMEOUT_MS)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "chat-page.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")

    assert len(sent) == 2
    assert sent[0]["stream"] is True and sent[0]["stream_options"] == {"include_usage": True}
    assert sent[0]["model"] == model_id and sent[0]["max_tokens"] == 24
    roles = [m["role"] for m in sent[1]["messages"]]
    assert roles == ["user", "assistant", "user"]
    assert sent[1]["messages"][1]["content"] == first
    assert page.locator("#error").is_hidden()
    assert not problems, problems


def test_chat_page_marks_answers_served_from_the_cache(page, model_id):
    """The response cache says so in an `X-Cache: hit` header or in `cached:
    true` on the chunks; either marks the answer, and neither means not cached."""
    from playwright.sync_api import expect

    page, problems = page
    signal = {}

    def mark(route):
        response = route.fetch()
        body = response.text()
        if signal.get("chunks"):
            body = body.replace('"object":"chat.completion.chunk"', '"object":"chat.completion.chunk","cached":true')
        route.fulfill(response=response, body=body, headers={**response.headers, **signal.get("headers", {})})

    page.route("**/v1/chat/completions", mark)
    page.get_by_label("Model").select_option(model_id)
    page.get_by_label("Max tokens").fill("8")
    for signal_now, expected in [({}, "not cached"), ({"headers": {"x-cache": "HIT"}}, "· cached"),
                                 ({"chunks": True}, "· cached")]:
        signal.clear()
        signal.update(signal_now)
        meta = ask(page, "Hello").locator(".meta")
        expect(meta).to_contain_text("tokens/s", timeout=ANSWER_TIMEOUT_MS)
        assert expected in meta.inner_text(), (signal_now, meta.inner_text())
        if expected != "not cached":
            assert "not cached" not in meta.inner_text()
    assert not problems, problems


def test_chat_page_shows_server_errors_readably(page, server, model_id):
    from playwright.sync_api import expect

    page, _ = page
    _, _, models = server.json("GET", "/v1/models")
    context = models["data"][0]["context_length"]
    page.get_by_label("Model").select_option(model_id)
    ask(page, "word " * (context * 2))
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("maximum context length", timeout=ANSWER_TIMEOUT_MS)
    expect(alert).to_be_in_viewport()
    # The failed turn leaves the log; its text comes back to the box, ready
    # to edit and resend.
    expect(page.locator("#log li")).to_have_count(0)
    assert page.get_by_label("Message").input_value().startswith("word word")


def test_stop_button_aborts_the_stream_and_keeps_what_was_shown(browser, slow_server):
    from playwright.sync_api import expect

    page, problems = open_page(browser, slow_server)
    # The slow model's weights are random: a sampled answer can end on the
    # end-of-text token after a token or two, leaving nothing to stop. Its
    # requests go on to their limit instead (the page itself is unchanged).
    def ignore_eos(route):
        body = json.loads(route.request.post_data)
        route.continue_(post_data=json.dumps({**body, "ignore_eos": True}))

    page.route("**/v1/chat/completions", ignore_eos)
    expect(page.get_by_label("Model")).to_be_enabled()
    page.get_by_label("Max tokens").fill("2000")
    answer = ask(page, "Tell me a very long story")
    stop = page.get_by_role("button", name="Stop")
    expect(stop).to_be_enabled()
    expect(answer.locator(".text")).not_to_have_text("", timeout=ANSWER_TIMEOUT_MS)
    stop.click()
    expect(answer.locator(".meta")).to_have_text("stopped")
    expect(stop).to_be_disabled()
    shown = answer.locator(".text").inner_text()

    # The stopped answer is part of the conversation the next turn sends.
    with page.expect_request("**/v1/chat/completions") as next_turn:
        ask(page, "Go on")
    stop.click()
    messages = next_turn.value.post_data_json["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == shown
    # Aborting the fetch cancels the generation in the engine.
    deadline = time.time() + 10
    while slow_server.json("GET", "/health")[2]["running"] and time.time() < deadline:
        time.sleep(0.05)
    assert slow_server.json("GET", "/health")[2]["running"] == 0
    assert not problems, problems
    page.close()


def test_root_answers_like_ollama_without_html(server):
    status, headers, body = server.request("GET", "/")
    assert status == 200
    assert body == b"Ollama is running"
    assert headers["content-type"].startswith("text/plain")


def test_root_serves_the_page_and_its_files_to_browsers(server):
    status, headers, body = server.request("GET", "/", headers={"Accept": "text/html"})
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert b"/static/chat.js" in body
    status, headers, head = server.request("HEAD", "/", headers={"Accept": "text/html"})
    assert status == 200 and head == b""
    for name, kind in [("chat.js", "text/javascript"), ("chat.css", "text/css")]:
        status, headers, body = server.request("GET", f"/static/{name}")
        assert status == 200 and headers["content-type"].startswith(kind) and body
        status, _, _ = server.request("GET", f"/static/{name}", headers={"If-None-Match": headers["etag"]})
        assert status == 304


def test_the_page_asks_once_for_the_api_key_of_a_keyed_server(browser, tmp_path):
    from playwright.sync_api import expect

    from conftest import BUNDLED, FIXTURE, Server

    s = Server([*([] if BUNDLED.exists() else ["--model", str(FIXTURE)]), "--api-key", "sk-page"], tmp_path / "serve.log")
    try:
        page = browser.new_page()
        asked = []

        def answer(dialog):
            asked.append(dialog.message)
            dialog.accept("sk-page")

        page.on("dialog", answer)
        page.goto(s.base + "/")
        expect(page.get_by_label("Model")).to_be_enabled(timeout=10_000)
        answer_item = ask(page, "Once upon a time")
        expect(answer_item.locator(".meta")).to_contain_text("tokens/s", timeout=ANSWER_TIMEOUT_MS)
        assert asked == ["This server needs an API key:"], asked
        assert page.evaluate("localStorage.getItem('tern-api-key')") == "sk-page"
        page.close()
    finally:
        s.stop()
