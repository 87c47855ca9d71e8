"""Open WebUI's own, unmodified frontend (from the `open-webui==0.12.4`
wheel) on `tern serve --webui`, in headless Chromium: onboarding, a
streamed answer with a title the model writes, the chat after a reload and
a restart, a second turn, Stop, archive, rename, delete, signing out and
in, and a second account waiting for the admin's approval. Once on SQLite
and once on PostgreSQL. A screenshot of each step goes to
tests/e2e/artifacts/webui-<database>-<step>.png.
"""

import re
import time

import httpx
import pytest

from conftest import synth
from test_page import ARTIFACTS, browser  # noqa: F401 - a fixture
from webui import start

PASSWORD = "correct horse battery"
TIMEOUT_MS = 120_000


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def webui(request, tmp_path_factory):
    s = start(request, tmp_path_factory, "webui")
    # A random-weight model of 48 layers, slow enough that an answer is
    # surely still coming when Stop is pressed.
    s.slow_model = synth(s.tmp, "tern-slow", "--layers", "48", "--context", "4096")
    yield s
    s.stop()


class Steps:
    """Screenshots of each step, and the page's script errors."""

    def __init__(self, page, kind):
        self.page, self.kind, self.errors, self.step = page, kind, [], "start"
        page.on("pageerror", lambda e: self.errors.append(f"after {self.step}: {e.name}: {e.message} {e.stack}"))

    def shot(self, step):
        self.step = step
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"webui-{self.kind}-{step}.png"))


def dismiss_release_notes(page):
    """The release-notes dialog an admin sees once per version."""
    button = page.get_by_role("button", name="Okay, Let's Go!")
    try:
        button.wait_for(timeout=5000)
    except Exception:  # noqa: BLE001 - it does not always show
        return
    button.click()
    button.wait_for(state="hidden")


def send(page, text):
    page.locator("#chat-input").click()
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def answers(page):
    return page.locator(".chat-assistant #response-content-container")


def wait_done(page, count):
    """Waits until `count` answers are shown and the last is finished."""
    page.wait_for_function(
        "n => document.querySelectorAll('.chat-assistant #response-content-container').length >= n",
        arg=count,
        timeout=TIMEOUT_MS,
    )
    page.locator(".copy-response-button").nth(count - 1).wait_for(timeout=TIMEOUT_MS)


def open_sidebar(page):
    """Opens the sidebar (it starts closed in a fresh browser)."""
    closed = "() => { const c = document.querySelector('#sidebar-chats-content'); return !c || !!c.closest('[inert]'); }"
    if page.evaluate(closed):
        page.get_by_role("button", name="Open Sidebar").first.click()
    page.wait_for_function("() => { const c = document.querySelector('#sidebar-chats-content'); return c && !c.closest('[inert]'); }")


def chat_link(page, chat_id):
    return page.locator(f'[data-sidebar-chat-id="{chat_id}"] a[href="/c/{chat_id}"]')


def chat_menu(page, chat_id, item):
    page.locator(f'[data-sidebar-chat-id="{chat_id}"]').hover()
    page.locator(f'[data-sidebar-chat-id="{chat_id}"]').get_by_role("button", name="Chat Menu").click()
    page.get_by_role("menuitem", name=item, exact=True).click()


def user_menu(page, item):
    page.get_by_role("button", name=re.compile(r"^(User menu|Open User Profile Menu)")).click()
    page.get_by_role("menuitem", name=item).click()


def sign_in(page, base, email):
    page.goto(base + "/auth")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.locator("#auth-container button[type=submit]").click()


def letters(text):
    """The letters and digits of a text: what survives the page rendering
    an answer as Markdown."""
    return re.sub(r"[\W_]+", "", text)


def set_params(webui, token, params):
    """Sets the user's default generation parameters as the frontend's own
    settings dialog does: inside the settings it keeps (`ui`)."""
    headers = {"Authorization": f"Bearer {token}"}
    settings = httpx.get(f"{webui.base}/api/v1/users/user/settings", headers=headers).json() or {}
    ui = {**settings.get("ui", {}), "params": params}
    r = httpx.post(f"{webui.base}/api/v1/users/user/settings/update", json={**settings, "ui": ui}, headers=headers)
    assert r.status_code == 200, r.text


def stored(webui, token, chat_id):
    r = httpx.get(f"{webui.base}/api/v1/chats/{chat_id}", headers={"Authorization": f"Bearer {token}"})
    return r.status_code, (r.json() if r.status_code == 200 else None)


def test_the_frontend_from_sign_up_to_approval(webui, browser):  # noqa: F811 - the fixture
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    page = context.new_page()
    page.set_default_timeout(30_000)
    steps = Steps(page, webui.kind)
    try:
        flow(webui, browser, page, steps)
    except Exception:
        steps.shot("failed")
        raise
    finally:
        context.close()


def flow(webui, browser, page, steps):  # noqa: F811 - the fixture

    # 1. The onboarding page; the first account is the admin.
    page.goto(webui.base + "/")
    page.get_by_role("button", name="Get started").click()
    page.fill("#name", "Ada Admin")
    page.fill("#email", "ada@example.com")
    page.fill("#password", PASSWORD)
    steps.shot("1-onboarding")
    page.locator("#auth-container button[type=submit]").click()
    page.locator("#chat-input").wait_for()
    dismiss_release_notes(page)
    token = page.evaluate("localStorage.token")
    me = httpx.get(webui.base + "/api/v1/auths/", headers={"Authorization": f"Bearer {token}"}).json()
    assert me["role"] == "admin", me
    # Answers run to a known length: the bundled model may end a turn at once.
    set_params(webui, token, {"max_tokens": 300, "ignore_eos": True})
    page.reload()
    page.locator("#chat-input").wait_for()
    dismiss_release_notes(page)

    # 2. The model selector lists tern-tiny; an answer streams in; the chat gets a title.
    page.locator("#model-selector-model-button").click()
    page.locator('#model-selector-list [role=option][data-value="tern-tiny"]').wait_for()
    steps.shot("2-models")
    page.keyboard.press("Escape")
    # Every text the answer shows, as it grows.
    page.evaluate(
        """() => { window.shown = new Set();
        new MutationObserver(() => { for (const e of document.querySelectorAll('.chat-assistant #response-content-container'))
            if (e.innerText.trim()) window.shown.add(e.innerText.trim()); })
        .observe(document.body, {subtree: true, childList: true, characterData: true}); }"""
    )
    send(page, "Speak of the king.")
    page.wait_for_url(re.compile(r"/c/[0-9a-f-]+$"), timeout=TIMEOUT_MS)
    chat_id = page.url.rsplit("/", 1)[1]
    wait_done(page, 1)
    first_answer = answers(page).first.inner_text().strip()
    assert first_answer
    assert page.evaluate("window.shown.size") >= 2, "the answer came in one piece, not streamed"
    page.wait_for_function("() => { const h = document.querySelector('nav h1'); return h && h.innerText.trim() && h.innerText.trim() !== 'New Chat'; }", timeout=TIMEOUT_MS)
    title = page.locator("nav h1").inner_text().strip()
    steps.shot("2-answer")
    status, chat = stored(webui, token, chat_id)
    assert status == 200 and chat["title"] == title
    saved = chat["chat"]["history"]["messages"]
    assert any(
        m.get("role") == "assistant" and m.get("done") and letters(m["content"]) == letters(first_answer)
        for m in saved.values()
    )

    # 3. After a reload the chat is in the sidebar with its messages; a second turn.
    page.goto(webui.base + "/")
    page.locator("#chat-input").wait_for()
    open_sidebar(page)
    chat_link(page, chat_id).click()
    page.wait_for_url(f"**/c/{chat_id}")
    page.get_by_text("Speak of the king.").wait_for()
    assert answers(page).first.inner_text().strip() == first_answer
    send(page, "And the queen?")
    wait_done(page, 2)
    assert answers(page).nth(1).inner_text().strip()
    steps.shot("3-second-turn")

    # 7 (between 3 and 6). A restart, on the slow model: nothing is lost.
    assert not steps.errors, steps.errors
    webui.restart(model=webui.slow_model)
    page.goto(f"{webui.base}/c/{chat_id}")
    # The open page's requests failed while the server was down.
    steps.errors.clear()
    page.get_by_text("And the queen?").wait_for()
    assert answers(page).first.inner_text().strip() == first_answer
    steps.shot("7-after-restart")

    # 4. Stop a long answer: its text so far stays, and the engine stops.
    set_params(webui, token, {"max_tokens": 100000, "ignore_eos": True})
    page.goto(webui.base + "/")
    page.locator("#chat-input").wait_for()
    send(page, "Go on and on.")
    page.wait_for_url(re.compile(r"/c/[0-9a-f-]+$"), timeout=TIMEOUT_MS)
    long_id = page.url.rsplit("/", 1)[1]
    page.wait_for_function(
        "() => { const e = document.querySelector('.chat-assistant #response-content-container'); return e && e.innerText.trim().length > 0; }",
        timeout=TIMEOUT_MS,
    )
    page.get_by_role("button", name="Stop").click()
    deadline = time.time() + 10
    while webui.running() and time.time() < deadline:
        time.sleep(0.05)
    assert webui.running() == 0
    partial = answers(page).first.inner_text().strip()
    assert partial
    steps.shot("4-stopped")
    time.sleep(1)
    assert answers(page).first.inner_text().strip() == partial, "the text stopped growing"
    _, chat = stored(webui, token, long_id)
    answer = next(m for m in chat["chat"]["history"]["messages"].values() if m.get("role") == "assistant")
    assert answer["done"] is True and letters(answer["content"]) == letters(partial)

    # 5. Archive the first chat and find it in the archive; rename the
    # stopped one; delete a third.
    extra = httpx.post(
        f"{webui.base}/api/v1/chats/new",
        json={"chat": {"title": "Chat to delete", "history": {"messages": {}, "currentId": None}}},
        headers={"Authorization": f"Bearer {token}"},
    ).json()["id"]
    page.goto(webui.base + "/")
    page.locator("#chat-input").wait_for()
    open_sidebar(page)
    chat_menu(page, chat_id, "Archive")
    chat_link(page, chat_id).wait_for(state="detached")
    page.goto(webui.base + "/?settings=archived_chats")
    archived = page.locator("#tab-archived-chats")
    archived.locator(f'a[href="/c/{chat_id}"]').wait_for()
    steps.shot("5-archive")
    page.goto(webui.base + "/")
    page.locator("#chat-input").wait_for()
    open_sidebar(page)
    chat_menu(page, long_id, "Rename")
    page.fill(f"#chat-title-input-{long_id}", "Renamed in the browser")
    page.keyboard.press("Enter")
    chat_link(page, long_id).filter(has_text="Renamed in the browser").wait_for()
    chat_menu(page, extra, "Delete")
    page.get_by_role("button", name="Confirm").click()
    chat_link(page, extra).wait_for(state="detached")
    steps.shot("5-renamed-and-deleted")
    assert stored(webui, token, long_id)[1]["title"] == "Renamed in the browser"
    assert stored(webui, token, extra)[0] == 404
    assert stored(webui, token, chat_id)[1]["archived"] is True

    # 6. Sign out and in again: the history is there.
    user_menu(page, "Sign Out")
    page.wait_for_url("**/auth**")
    sign_in(page, webui.base, "ada@example.com")
    page.locator("#chat-input").wait_for()
    dismiss_release_notes(page)
    open_sidebar(page)
    chat_link(page, long_id).wait_for()
    steps.shot("6-signed-in-again")

    # A second account waits for the admin's approval.
    other_context = browser.new_context(viewport={"width": 1280, "height": 720})
    other = other_context.new_page()
    other.set_default_timeout(30_000)
    other.goto(webui.base + "/auth")
    other.locator("#auth-container button[type=button]", has_text="Sign up").click()
    other.fill("#name", "Bea Later")
    other.fill("#email", "bea@example.com")
    other.fill("#password", PASSWORD)
    other.locator("#auth-container button[type=submit]").click()
    other.get_by_text("Account Activation Pending").wait_for()
    Steps(other, webui.kind).shot("6-pending")
    page.goto(webui.base + "/admin/users/overview")
    row = page.locator("tbody tr", has=page.locator("td", has_text="bea@example.com"))
    row.get_by_role("button", name="Change User Role").click()
    page.get_by_label("Role", exact=True).select_option("user")
    steps.shot("6-approve")
    page.get_by_role("button", name="Save").click()
    row.get_by_role("button", name="Change User Role").filter(has_text="user").wait_for()
    other.get_by_role("button", name="Check Again").click()
    other.locator("#chat-input").wait_for()
    Steps(other, webui.kind).shot("6-approved")
    assert not steps.errors, steps.errors
    other_context.close()
