"""Open WebUI's frontend served by `tern serve --webui`, below the browser:
its files and client-side routes, Socket.IO over Engine.IO long-polling
with the real `python-socketio` client, and chat answers that stream over
it, are saved, and stop. Once on SQLite and once on PostgreSQL.

Every route that takes an id is tried with another user's id; every text
field gets SQL and path strings; every limit gets a request just past it.
"""

import json
import threading
import time

import httpx
import pytest
import socketio

from conftest import synth
from webui import start

HOSTILE = [
    "Robert'); DROP TABLE chats;--",
    "' OR '1'='1",
    "../../../../etc/passwd",
    "<script>alert(1)</script>",
    "$1 $2 ?1 ?2",
]
EVENT_TIMEOUT = 120


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def webui(request, tmp_path_factory):
    s = start(request, tmp_path_factory, "webui-api")
    s.http = httpx.Client(base_url=s.base, timeout=60)
    yield s
    s.http.close()
    s.stop()


def signup(webui, name):
    r = httpx.post(
        webui.base + "/api/v1/auths/signup",
        json={"name": name, "email": f"{name.lower()}@example.com", "password": "pw-" + "x" * 10},
    )
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def users(webui):
    admin = signup(webui, "Admin")
    other = signup(webui, "Other")
    approve = {"role": "user", "name": "Other", "email": "other@example.com", "profile_image_url": "/user.png"}
    r = webui.http.post(f"/api/v1/users/{other['id']}/update", json=approve, headers=auth(admin))
    assert r.status_code == 200, r.text
    return {"admin": admin, "other": other}


def auth(user):
    return {"Authorization": f"Bearer {user['token']}"}


class Socket:
    """A Socket.IO client on the polling transport, joined as `user`,
    collecting the `events` it is sent."""

    def __init__(self, webui, user):
        self.events = []
        self.arrived = threading.Condition()
        self.client = socketio.Client()
        self.client.on("events", self._on_event)
        self.client.connect(
            webui.base, socketio_path="/ws/socket.io", transports=["polling"], auth={"token": user["token"]}
        )
        joined = self.client.call("user-join", {"auth": {"token": user["token"]}}, timeout=10)
        assert joined["id"] == user["id"], joined

    def _on_event(self, data):
        with self.arrived:
            self.events.append(data)
            self.arrived.notify_all()

    def wait_for(self, message_id, kind, done=None, data=None):
        """The first event of `kind` for `message_id` (with `done` set, or
        with exactly `data`, when asked)."""

        def found():
            for e in self.events:
                d = e["data"]
                if e["message_id"] == message_id and d["type"] == kind:
                    if data is not None and d["data"] != data:
                        continue
                    if done is None or bool(d["data"].get("done")) == done:
                        return e
            return None

        with self.arrived:
            assert self.arrived.wait_for(found, timeout=EVENT_TIMEOUT), f"no {kind} for {message_id}: {self.events}"
            return found()

    def close(self):
        self.client.disconnect()


def turn(webui, user, text, answer_id, chat_id=None, parent_id=None, model="tern-tiny", **extra):
    body = {
        "model": model,
        "stream": True,
        "id": answer_id,
        "parent_id": parent_id,
        "user_message": {"id": answer_id + "-q", "parentId": parent_id, "role": "user", "content": text},
        "background_tasks": {"title_generation": True},
        **extra,
    }
    if chat_id:
        body["chat_id"] = chat_id
    return webui.http.post("/api/chat/completions", json=body, headers=auth(user))


def restart(webui, model):
    """Restarts the server on `model`, with a client that has no
    connections to the old one."""
    webui.restart(model=model)
    webui.http.close()
    webui.http = httpx.Client(base_url=webui.base, timeout=60)


def stored_chat(webui, user, chat_id):
    r = webui.http.get(f"/api/v1/chats/{chat_id}", headers=auth(user))
    assert r.status_code == 200, r.text
    return r.json()


def test_the_frontend_files_and_its_client_routes(webui):
    index = webui.http.get("/", headers={"accept": "text/html"})
    assert index.status_code == 200 and "<!doctype html>" in index.text.lower()
    assert index.headers["cache-control"] == "no-store"
    # Client-side routes load the app; API paths stay JSON 404s.
    for route in ["/auth", "/c/some-chat", "/admin/users"]:
        r = webui.http.get(route, headers={"accept": "text/html"})
        assert r.status_code == 200 and r.text == index.text, route
    missing = webui.http.get("/api/v1/nothing-here", headers={"accept": "text/html"})
    assert missing.status_code == 404 and "detail" in missing.json()
    assert webui.http.get("/c/x", headers={"accept": "application/json"}).status_code == 404
    # SvelteKit's build id, unchanged; hashed files cached for a year.
    assert webui.http.get("/_app/version.json").json()["version"]
    page = index.text
    asset = page[page.index("/_app/immutable/") :].split('"')[0]
    r = webui.http.get(asset)
    assert r.status_code == 200 and r.headers["cache-control"] == "public, max-age=31536000, immutable"
    favicon = webui.http.get("/static/favicon.png")
    assert favicon.status_code == 200 and favicon.headers["content-type"] == "image/png"
    again = webui.http.get("/static/favicon.png", headers={"if-none-match": favicon.headers["etag"]})
    assert again.status_code == 304
    for escape in ["/static/../../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd", "/.%2e/Cargo.toml"]:
        r = httpx.get(webui.base + escape)
        assert r.status_code == 404, escape
    # The version the frontend was built as: it reloads on any other.
    assert webui.http.get("/api/version").json()["version"] == "0.12.4"
    config = webui.http.get("/api/config").json()
    assert config["version"] == "0.12.4" and config["features"]["enable_websocket"] is False


def test_socketio_polling_with_the_real_client(webui, users):
    sock = Socket(webui, users["admin"])
    try:
        assert sock.client.transport() == "polling"
        assert sock.client.call("events:chat", {"chat_id": "x", "data": {"type": "join"}}, timeout=10) is True
        sock.client.emit("heartbeat", {})
    finally:
        sock.close()
    r = httpx.get(webui.base + "/ws/socket.io/?EIO=4&transport=polling&sid=not-a-session")
    assert r.status_code == 400
    r = httpx.get(webui.base + "/ws/socket.io/?EIO=4&transport=websocket")
    assert r.status_code == 400
    # One packet past the payload limit.
    sid = httpx.get(webui.base + "/ws/socket.io/?EIO=4&transport=polling").text
    sid = sid[sid.index('"sid":"') + 7 :].split('"')[0]
    url = webui.base + f"/ws/socket.io/?EIO=4&transport=polling&sid={sid}"
    assert httpx.post(url, content="\x1e".join(["3"] * 65)).status_code == 400
    assert httpx.post(url, content="\x1e".join(["3"] * 64)).status_code == 200


def test_an_answer_streams_over_the_socket_is_saved_and_titled(webui, users):
    admin = users["admin"]
    sock = Socket(webui, admin)
    try:
        # Long enough to come in several events (one each 40 ms at most).
        r = turn(webui, admin, "Speak of the king.", "a1", params={"ignore_eos": True, "max_tokens": 300})
        assert r.status_code == 200, r.text
        started = r.json()
        assert started["status"] is True and len(started["task_ids"]) == 1
        chat_id = started["chat_id"]
        # Stored before the answer: the question and an empty answer.
        first = stored_chat(webui, admin, chat_id)["chat"]["history"]["messages"]
        assert first["a1-q"]["content"] == "Speak of the king."
        assert first["a1"]["parentId"] == "a1-q"
        done = sock.wait_for("a1", "chat:completion", done=True)["data"]["data"]
        assert done["content"], done
        pieces = [e for e in sock.events if e["message_id"] == "a1" and e["data"]["type"] == "chat:completion"]
        assert len(pieces) > 2, "the text came in pieces"
        title = sock.wait_for("a1", "chat:title")["data"]["data"]
        sock.wait_for("a1", "chat:active", data={"active": False})
        chat = stored_chat(webui, admin, chat_id)
        answer = chat["chat"]["history"]["messages"]["a1"]
        assert answer["content"] == done["content"] and answer["done"] is True
        assert chat["title"] == chat["chat"]["title"] == title != "New Chat"
        # A second turn continues the stored conversation.
        r = turn(webui, admin, "And the queen?", "a2", chat_id=chat_id, parent_id="a1")
        assert r.status_code == 200 and r.json()["chat_id"] == chat_id, r.text
        assert sock.wait_for("a2", "chat:completion", done=True)["data"]["data"]["content"]
        history = stored_chat(webui, admin, chat_id)["chat"]["history"]
        assert history["currentId"] == "a2" and history["messages"]["a2-q"]["parentId"] == "a1"
        assert "a2-q" in history["messages"]["a1"]["childrenIds"]
        assert webui.http.get(f"/api/tasks/chat/{chat_id}", headers=auth(admin)).json() == {"task_ids": []}
    finally:
        sock.close()


def test_stop_cancels_the_answer_and_keeps_its_text(webui, users, tmp_path):
    admin = users["admin"]
    # A random-weight model of 48 layers: the answer is surely still going
    # when the stop arrives. The accounts stay across the restart.
    slow = synth(tmp_path, "tern-slow", "--layers", "48", "--context", "4096")
    restart(webui, slow)
    sock = Socket(webui, admin)
    try:
        params = {"ignore_eos": True, "max_tokens": 100000}
        r = turn(webui, admin, "Go on and on.", "s1", model="tern-slow", params=params)
        assert r.status_code == 200, r.text
        chat_id, task = r.json()["chat_id"], r.json()["task_ids"][0]
        sock.wait_for("s1", "chat:completion")
        assert webui.http.get(f"/api/tasks/chat/{chat_id}", headers=auth(admin)).json() == {"task_ids": [task]}
        stop = webui.http.post(f"/api/tasks/chat/{chat_id}/stop", headers=auth(admin))
        assert stop.status_code == 200, stop.text
        done = sock.wait_for("s1", "chat:completion", done=True)["data"]["data"]
        sock.wait_for("s1", "chat:tasks:cancel")
        deadline = time.time() + 10
        while webui.running() and time.time() < deadline:
            time.sleep(0.05)
        assert webui.running() == 0
        answer = stored_chat(webui, admin, chat_id)["chat"]["history"]["messages"]["s1"]
        assert answer["done"] is True and answer["content"] == done["content"] != ""
        assert done["usage"] is None, "stopped before the engine finished"
    finally:
        sock.close()
        restart(webui, webui.model)


def test_another_users_chats_and_tasks_read_as_missing(webui, users):
    admin, other = users["admin"], users["other"]
    r = turn(webui, admin, "Mine.", "m1", params={"max_tokens": 4})
    chat_id, task = r.json()["chat_id"], r.json()["task_ids"][0]
    assert turn(webui, other, "Theirs?", "o1", chat_id=chat_id, parent_id="m1").status_code == 404
    assert webui.http.get(f"/api/tasks/chat/{chat_id}", headers=auth(other)).status_code == 404
    assert webui.http.post(f"/api/tasks/chat/{chat_id}/stop", headers=auth(other)).status_code == 404
    assert webui.http.post(f"/api/tasks/stop/{task}", headers=auth(other)).status_code in (404,)
    assert webui.http.get(f"/api/v1/chats/{chat_id}", headers=auth(other)).status_code == 404
    # Without an account: 401.
    assert httpx.post(webui.base + "/api/chat/completions", json={}).status_code == 401


def test_hostile_text_in_every_field_is_text(webui, users):
    admin = users["admin"]
    for i, text in enumerate(HOSTILE):
        r = turn(webui, admin, text, f"h{i}", chat_id=text, parent_id=text)
        assert r.status_code == 404, (text, r.text)  # no such chat of theirs
        r = turn(webui, admin, text, text, params={"max_tokens": 2})
        assert r.status_code == 200, (text, r.text)
        chat = stored_chat(webui, admin, r.json()["chat_id"])
        assert chat["chat"]["history"]["messages"][text + "-q"]["content"] == text
        assert webui.http.get(f"/api/tasks/chat/{text}", headers=auth(admin)).status_code == 404
    # Bad requests are 4xx with a JSON detail, never 500.
    for body in [
        {},
        {"model": "tern-tiny"},
        {"model": "nope", "id": "x", "user_message": {"id": "q", "content": "hi"}},
        {"model": "tern-tiny", "id": "x", "user_message": "hi"},
        {"model": "tern-tiny", "id": "x" * 101, "user_message": {"id": "q", "content": "hi"}},
        {"model": "tern-tiny", "id": "x", "user_message": {"id": "q", "content": "hi"}, "params": {"temperature": "hot"}},
        {"model": "tern-tiny", "id": "x", "chat_id": "local:t", "user_message": {"id": "q", "content": "hi"}},
    ]:
        r = webui.http.post("/api/chat/completions", json=body, headers=auth(admin))
        assert 400 <= r.status_code < 500 and "detail" in r.json(), (body, r.status_code, r.text)


def test_title_and_tags_come_from_the_model(webui, users):
    admin = users["admin"]
    messages = [{"role": "user", "content": "Speak of the king."}, {"role": "assistant", "content": "The king is dead."}]
    for kind, key in [("title", "title"), ("tags", "tags")]:
        r = webui.http.post(f"/api/v1/tasks/{kind}/completions", json={"model": "tern-tiny", "messages": messages}, headers=auth(admin))
        assert r.status_code == 200, r.text
        answer = json.loads(r.json()["choices"][0]["message"]["content"])
        assert key in answer, answer
    assert isinstance(answer["tags"], list)
    r = webui.http.post("/api/v1/tasks/title/completions", json={"model": "nope", "messages": messages}, headers=auth(admin))
    assert r.status_code == 404 and "detail" in r.json()
    r = webui.http.post("/api/v1/tasks/title/completions", json={"model": "tern-tiny", "messages": "x"}, headers=auth(admin))
    assert r.status_code == 400 and "detail" in r.json()
    assert httpx.post(webui.base + "/api/v1/tasks/title/completions", json={}).status_code == 401
