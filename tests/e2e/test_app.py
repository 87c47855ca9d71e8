"""The app layer (accounts, chats, files) in Open WebUI's API shapes, run
once on SQLite and once on a real PostgreSQL, with httpx as the client.

Every route that takes an id is tried with another user's id; every text
field gets SQL and path strings; every limit gets a request just past it.
"""

import base64
import hashlib
import hmac
import http.cookiejar
import http.server
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time

import httpx
import pytest

from conftest import BUNDLED, FIXTURE, Server, tern_binary

SECRET = "app-test-signing-secret-0123456789"
OPERATOR_KEY = "sk-operator-key"
HOSTILE = [
    "Robert'); DROP TABLE chats;--",
    "' OR '1'='1",
    "../../../../etc/passwd",
    "%00\\x00; SELECT * FROM users --",
    "<script>alert(1)</script>",
    "$1 $2 ?1 ?2",
]
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))


class Upstream(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible media server: images, speech, transcriptions."""

    seen = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        Upstream.seen.append((self.path, self.headers.get("authorization"), self.headers.get("content-type"), body))
        if self.path == "/v1/images/generations":
            request = json.loads(body)
            if request["prompt"] == "fail":
                return self.answer(400, "application/json", json.dumps({"error": {"message": "unsafe prompt"}}).encode())
            images = [{"b64_json": base64.b64encode(PNG).decode()} for _ in range(request["n"])]
            return self.answer(200, "application/json", json.dumps({"created": 1, "data": images}).encode())
        if self.path == "/v1/audio/speech":
            return self.answer(200, "audio/mpeg", b"ID3 spoken:" + json.loads(body)["input"].encode())
        if self.path == "/v1/audio/transcriptions":
            return self.answer(200, "application/json", json.dumps({"text": f"heard {len(body)} bytes"}).encode())
        self.answer(404, "application/json", b'{"error":{"message":"no such route"}}')

    def answer(self, status, kind, data):
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def upstream():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def model_args():
    return [] if BUNDLED.exists() else ["--model", str(FIXTURE)]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def app(request, tmp_path_factory, upstream):
    """A server with the app layer on the parametrised database."""
    tmp = tmp_path_factory.mktemp(f"app-{request.param}")
    args = [*model_args(), "--jwt-secret", SECRET, "--api-key", OPERATOR_KEY, "--max-upload-mib", "1"]
    args += ["--media-upstream", upstream, "--media-upstream-key", "sk-upstream"]
    if request.param == "postgres":
        args += ["--database-url", request.getfixturevalue("postgres").new_database()]
    server = Server(args, tmp / "serve.log")
    server.kind = request.param
    # The shared client keeps no cookies: each test says how it signs in.
    no_cookies = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    server.http = httpx.Client(base_url=server.base, timeout=60, cookies=no_cookies)
    yield server
    server.http.close()
    server.stop()


def signup(app, name, email, password="pw-" + "x" * 8):
    r = app.http.post("/api/v1/auths/signup", json={"name": name, "email": email, "password": password})
    assert r.status_code == 200, r.text
    return r.json()


def auth(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def accounts(app):
    """The first account (admin) and two approved users, A and B."""
    admin = signup(app, "Admin", "admin@example.com")
    assert admin["role"] == "admin"
    users = {}
    for name in ["alice", "bob"]:
        user = signup(app, name.title(), f"{name}@example.com")
        assert user["role"] == "pending"
        r = app.http.post(f"/api/v1/users/{user['id']}/update", json={"role": "user"}, headers=auth(admin["token"]))
        assert r.status_code == 200 and r.json()["role"] == "user", r.text
        users[name] = user
    return {"admin": admin, **users}


def h(accounts, who):
    return auth(accounts[who]["token"])


def new_chat(app, headers, title="Hello", messages=None):
    chat = {"title": title, "history": {"messages": messages or {}, "currentId": None}}
    r = app.http.post("/api/v1/chats/new", json={"chat": chat}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def upload(app, headers, name="notes.txt", data=b"hello file", kind="text/plain", metadata=None):
    files = {"file": (name, data, kind)}
    form = {"metadata": json.dumps(metadata)} if metadata is not None else None
    return app.http.post("/api/v1/files/", files=files, data=form, headers=headers)


def token(claims):
    """An HS256 token signed with the server's secret."""
    b64 = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def claims_of(jwt):
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# --- sign-up, roles, sessions -------------------------------------------------


def test_onboarding_then_first_account_is_admin(app, accounts):
    config = app.http.get("/api/config").json()
    assert "onboarding" not in config and config["features"]["auth"] is True
    me = app.http.get("/api/v1/auths/", headers=h(accounts, "admin")).json()
    assert me["role"] == "admin" and me["email"] == "admin@example.com" and "password" not in me
    # A pending account may sign in but do nothing else until approved.
    pending = signup(app, "Pat", "pat@example.com")
    assert pending["role"] == "pending"
    assert app.http.get("/api/v1/auths/", headers=auth(pending["token"])).status_code == 200
    assert app.http.get("/api/v1/chats/", headers=auth(pending["token"])).status_code == 403
    assert app.http.get("/api/models", headers=auth(pending["token"])).status_code == 403


def test_signin_cookie_signout_and_failures(app, accounts):
    r = app.http.post("/api/v1/auths/signin", json={"email": "ALICE@example.com", "password": "pw-" + "x" * 8})
    assert r.status_code == 200, r.text
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert r.json()["token_type"] == "Bearer" and r.json()["expires_at"] > time.time()
    with httpx.Client(base_url=app.base) as browser:
        browser.cookies.set("token", r.json()["token"])
        assert browser.get("/api/v1/auths/").json()["email"] == "alice@example.com"
    out = app.http.post("/api/v1/auths/signout")
    assert out.json() == {"status": True} and "Max-Age=0" in out.headers["set-cookie"]
    # Signing out ends that session, and only that one.
    session = r.json()["token"]
    other = app.http.post("/api/v1/auths/signin", json={"email": "alice@example.com", "password": "pw-" + "x" * 8})
    assert app.http.post("/api/v1/auths/signout", headers=auth(session)).status_code == 200
    assert app.http.get("/api/v1/auths/", headers=auth(session)).status_code == 401
    assert app.http.get("/api/v1/auths/", headers=auth(other.json()["token"])).status_code == 200
    assert app.http.get("/api/v1/auths/", headers=h(accounts, "alice")).status_code == 200
    bad = app.http.post("/api/v1/auths/signin", json={"email": "alice@example.com", "password": "nope"})
    assert bad.status_code == 400 and "incorrect" in bad.json()["detail"]
    unknown = app.http.post("/api/v1/auths/signin", json={"email": "nobody@example.com", "password": "nope"})
    assert unknown.status_code == 400 and unknown.json()["detail"] == bad.json()["detail"]
    assert app.http.post("/api/v1/auths/signin", json={"email": "x"}).status_code == 400
    assert app.http.post("/api/v1/auths/signin", content=b"{not json").status_code == 400


def test_signin_failures_are_rate_limited_per_account(app, accounts):
    signup(app, "Target", "target@example.com", "right-password")
    statuses = []
    for _ in range(11):
        r = app.http.post("/api/v1/auths/signin", json={"email": "target@example.com", "password": "wrong"})
        statuses.append(r.status_code)
    assert statuses[:10] == [400] * 10 and statuses[10] == 429, statuses
    # The limit holds even for the right password until the window ends.
    right = app.http.post("/api/v1/auths/signin", json={"email": "target@example.com", "password": "right-password"})
    assert right.status_code == 429
    # Other accounts are not affected.
    assert app.http.post(
        "/api/v1/auths/signin", json={"email": "bob@example.com", "password": "pw-" + "x" * 8}
    ).status_code == 200


def test_expired_tampered_and_foreign_tokens_are_refused(app, accounts):
    alice = accounts["alice"]
    claims = claims_of(alice["token"])
    assert app.http.get("/api/v1/auths/", headers=auth(token(claims))).status_code == 200
    expired = token({**claims, "exp": int(time.time()) - 1})
    assert app.http.get("/api/v1/auths/", headers=auth(expired)).status_code == 401
    head, _, sig = alice["token"].split(".")
    forged_body = base64.urlsafe_b64encode(json.dumps({**claims, "id": accounts["admin"]["id"]}).encode())
    forged = f"{head}.{forged_body.rstrip(b'=').decode()}.{sig}"
    assert app.http.get("/api/v1/users/", headers=auth(forged)).status_code == 401
    none_alg = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    assert app.http.get("/api/v1/auths/", headers=auth(f"{none_alg}.{forged_body.decode()}.")).status_code == 401
    other_secret = hmac.new(b"another secret", f"{head}.x".encode(), hashlib.sha256)
    assert app.http.get("/api/v1/auths/", headers=auth(f"{head}.x.{other_secret.hexdigest()}")).status_code == 401
    assert app.http.get("/api/v1/auths/", headers=auth("garbage")).status_code == 401
    # The server's operator key is not an account.
    assert app.http.get("/api/v1/auths/", headers=auth(OPERATOR_KEY)).status_code == 401


def test_operator_key_guards_the_model_apis_and_accounts_the_app(app, accounts):
    assert app.http.get("/v1/models").status_code == 401
    assert app.http.get("/v1/models", headers=auth(OPERATOR_KEY)).status_code == 200
    models = app.http.get("/api/models", headers=h(accounts, "alice")).json()["data"]
    assert models and models[0]["id"] == app.http.get("/v1/models", headers=auth(OPERATOR_KEY)).json()["data"][0]["id"]


def test_user_api_keys(app, accounts):
    headers = h(accounts, "bob")
    key = app.http.post("/api/v1/auths/api_key", headers=headers).json()["api_key"]
    assert key.startswith("sk-") and len(key) == 35
    assert app.http.get("/api/v1/auths/api_key", headers=headers).status_code == 200
    chat = new_chat(app, auth(key), "made with a key")
    assert chat["user_id"] == accounts["bob"]["id"]
    assert app.http.delete("/api/v1/auths/api_key", headers=headers).json() is True
    assert app.http.get("/api/v1/chats/", headers=auth(key)).status_code == 401
    assert app.http.get("/api/v1/auths/api_key", headers=headers).status_code == 404


def test_password_change_ends_other_sessions_and_keeps_data(app, accounts):
    user = signup(app, "Carol", "carol@example.com", "first-password")
    admin = h(accounts, "admin")
    app.http.post(f"/api/v1/users/{user['id']}/update", json={"role": "user"}, headers=admin)
    chat = new_chat(app, auth(user["token"]), "kept")
    key = app.http.post("/api/v1/auths/api_key", headers=auth(user["token"])).json()["api_key"]
    wrong = app.http.post(
        "/api/v1/auths/update/password", json={"password": "nope", "new_password": "x"}, headers=auth(user["token"])
    )
    assert wrong.status_code == 400
    r = app.http.post(
        "/api/v1/auths/update/password",
        json={"password": "first-password", "new_password": "second-password"},
        headers=auth(user["token"]),
    )
    assert r.status_code == 200 and r.json() is True
    assert app.http.get("/api/v1/auths/", headers=auth(user["token"])).status_code == 401
    old = app.http.post("/api/v1/auths/signin", json={"email": "carol@example.com", "password": "first-password"})
    assert old.status_code == 400
    new = app.http.post("/api/v1/auths/signin", json={"email": "carol@example.com", "password": "second-password"})
    assert new.status_code == 200
    assert app.http.get(f"/api/v1/chats/{chat['id']}", headers=auth(new.json()["token"])).json()["title"] == "kept"
    assert app.http.get(f"/api/v1/chats/{chat['id']}", headers=auth(key)).status_code == 200
    # Nobody else was signed out.
    assert app.http.get("/api/v1/auths/", headers=h(accounts, "alice")).status_code == 200


def test_admin_user_management(app, accounts):
    admin = h(accounts, "admin")
    listed = app.http.get("/api/v1/users/?page=1", headers=admin).json()
    assert listed["total"] >= 3 and {"alice@example.com", "bob@example.com"} <= {u["email"] for u in listed["users"]}
    found = app.http.get("/api/v1/users/?query=ALI", headers=admin).json()
    assert [u["email"] for u in found["users"]] == ["alice@example.com"]
    assert app.http.get(f"/api/v1/users/{accounts['alice']['id']}", headers=admin).json()["name"] == "Alice"
    dave = signup(app, "Dave", "dave@example.com")
    r = app.http.post(
        f"/api/v1/users/{dave['id']}/update",
        json={"name": "David", "email": "David@Example.com", "role": "user", "password": "admin-set"},
        headers=admin,
    )
    assert r.status_code == 200 and r.json()["email"] == "david@example.com" and r.json()["name"] == "David"
    assert app.http.post(
        "/api/v1/auths/signin", json={"email": "david@example.com", "password": "admin-set"}
    ).status_code == 200
    taken = app.http.post(f"/api/v1/users/{dave['id']}/update", json={"email": "alice@example.com"}, headers=admin)
    assert taken.status_code == 400 and "already registered" in taken.json()["detail"]
    assert app.http.post(f"/api/v1/users/{dave['id']}/update", json={"role": "root"}, headers=admin).status_code == 400
    # The admin cannot delete themselves, nor demote the primary admin.
    me = accounts["admin"]["id"]
    assert app.http.delete(f"/api/v1/users/{me}", headers=admin).status_code == 403
    assert app.http.post(f"/api/v1/users/{me}/update", json={"role": "user"}, headers=admin).status_code == 403
    assert app.http.delete(f"/api/v1/users/{dave['id']}", headers=admin).json() is True
    assert app.http.get(f"/api/v1/users/{dave['id']}", headers=admin).status_code == 404
    assert app.http.post(
        "/api/v1/auths/signin", json={"email": "david@example.com", "password": "admin-set"}
    ).status_code == 400
    assert app.http.delete("/api/v1/users/no-such-user", headers=admin).status_code == 404


def test_own_settings_and_info(app, accounts):
    headers = h(accounts, "alice")
    assert app.http.get("/api/v1/users/user/settings", headers=headers).json() is None
    settings = {"ui": {"theme": "dark", "note": HOSTILE[0]}}
    assert app.http.post("/api/v1/users/user/settings/update", json=settings, headers=headers).json() == settings
    assert app.http.get("/api/v1/users/user/settings", headers=headers).json() == settings
    app.http.post("/api/v1/users/user/info/update", json={"a": 1}, headers=headers)
    assert app.http.post("/api/v1/users/user/info/update", json={"b": 2}, headers=headers).json() == {"a": 1, "b": 2}
    # Bob's settings are his own.
    assert app.http.get("/api/v1/users/user/settings", headers=h(accounts, "bob")).json() is None


# --- chats --------------------------------------------------------------------


def test_chat_create_get_update_merge_delete(app, accounts):
    headers = h(accounts, "alice")
    chat = new_chat(app, headers, "First", {"m1": {"id": "m1", "role": "user", "content": "hi"}})
    assert chat["title"] == "First" and chat["archived"] is False and chat["user_id"] == accounts["alice"]["id"]
    update = {"chat": {"history": {"messages": {"m2": {"id": "m2", "role": "assistant", "content": "hello"}}, "currentId": "m2"}}}
    merged = app.http.post(f"/api/v1/chats/{chat['id']}", json=update, headers=headers).json()
    assert set(merged["chat"]["history"]["messages"]) == {"m1", "m2"}
    assert merged["chat"]["history"]["currentId"] == "m2" and merged["chat"]["title"] == "First"
    renamed = app.http.post(f"/api/v1/chats/{chat['id']}", json={"chat": {"title": "Renamed"}}, headers=headers).json()
    assert renamed["title"] == "Renamed"
    assert app.http.get(f"/api/v1/chats/{chat['id']}", headers=headers).json()["title"] == "Renamed"
    assert app.http.post("/api/v1/chats/new", json={"chat": "text"}, headers=headers).status_code == 400
    assert app.http.post("/api/v1/chats/new", json={}, headers=headers).status_code == 400
    assert app.http.delete(f"/api/v1/chats/{chat['id']}", headers=headers).json() is True
    assert app.http.get(f"/api/v1/chats/{chat['id']}", headers=headers).status_code == 404


def test_chat_list_pages_archive_pin_search(app, accounts):
    user = signup(app, "Lister", "lister@example.com")
    app.http.post(f"/api/v1/users/{user['id']}/update", json={"role": "user"}, headers=h(accounts, "admin"))
    headers = auth(user["token"])
    ids = [new_chat(app, headers, f"chat {i:02d}")["id"] for i in range(65)]
    first = app.http.get("/api/v1/chats/?page=1", headers=headers).json()
    second = app.http.get("/api/v1/chats/?page=2", headers=headers).json()
    assert len(first) == 60 and len(second) == 5
    assert {c["id"] for c in first + second} == set(ids)
    assert len(app.http.get("/api/v1/chats/list", headers=headers).json()) == 65
    assert app.http.get("/api/v1/chats/?page=0", headers=headers).status_code == 400
    archived = app.http.post(f"/api/v1/chats/{ids[0]}/archive", headers=headers).json()
    assert archived["archived"] is True
    assert ids[0] not in {c["id"] for c in app.http.get("/api/v1/chats/", headers=headers).json()}
    assert [c["id"] for c in app.http.get("/api/v1/chats/archived", headers=headers).json()] == [ids[0]]
    assert [c["id"] for c in app.http.get("/api/v1/chats/all/archived", headers=headers).json()] == [ids[0]]
    assert app.http.post(f"/api/v1/chats/{ids[0]}/archive", headers=headers).json()["archived"] is False
    assert app.http.post(f"/api/v1/chats/{ids[1]}/pin", headers=headers).json()["pinned"] is True
    assert app.http.get(f"/api/v1/chats/{ids[1]}/pinned", headers=headers).json() is True
    assert [c["id"] for c in app.http.get("/api/v1/chats/pinned", headers=headers).json()] == [ids[1]]
    assert ids[1] not in {c["id"] for c in app.http.get("/api/v1/chats/", headers=headers).json()}
    found = app.http.get("/api/v1/chats/search", params={"text": "CHAT 07"}, headers=headers).json()
    assert [c["id"] for c in found] == [ids[7]]
    assert app.http.get("/api/v1/chats/search", params={"text": "%"}, headers=headers).json() == []
    assert app.http.post("/api/v1/chats/archive/all", headers=headers).json() is True
    assert app.http.get("/api/v1/chats/", headers=headers).json() == []
    assert app.http.delete("/api/v1/chats/", headers=headers).json() is True
    assert app.http.get("/api/v1/chats/archived", headers=headers).json() == []


def test_chat_tags(app, accounts):
    headers = h(accounts, "alice")
    chat = new_chat(app, headers, "tagged")
    tags = app.http.post(f"/api/v1/chats/{chat['id']}/tags", json={"name": "Work Stuff"}, headers=headers).json()
    assert tags == [{"id": "work_stuff", "name": "Work Stuff", "user_id": accounts["alice"]["id"], "meta": None}]
    app.http.post(f"/api/v1/chats/{chat['id']}/tags", json={"name": HOSTILE[0]}, headers=headers)
    names = {t["name"] for t in app.http.get(f"/api/v1/chats/{chat['id']}/tags", headers=headers).json()}
    assert names == {"Work Stuff", HOSTILE[0]}
    assert {t["name"] for t in app.http.get("/api/v1/chats/all/tags", headers=headers).json()} >= names
    by_tag = app.http.post("/api/v1/chats/tags", json={"name": "work stuff"}, headers=headers).json()
    assert [c["id"] for c in by_tag] == [chat["id"]]
    left = app.http.request("DELETE", f"/api/v1/chats/{chat['id']}/tags", json={"name": "Work Stuff"}, headers=headers)
    assert [t["name"] for t in left.json()] == [HOSTILE[0]]
    assert app.http.post(f"/api/v1/chats/{chat['id']}/tags", json={"name": ""}, headers=headers).status_code == 400


def test_chat_share(app, accounts):
    alice, bob = h(accounts, "alice"), h(accounts, "bob")
    chat = new_chat(app, alice, "shared one", {"m": {"id": "m", "content": "public words"}})
    shared = app.http.post(f"/api/v1/chats/{chat['id']}/share", headers=alice).json()
    share_id = shared["share_id"]
    assert share_id and share_id != chat["id"]
    seen = app.http.get(f"/api/v1/chats/share/{share_id}", headers=bob).json()
    assert seen["id"] == share_id and seen["chat"]["history"]["messages"]["m"]["content"] == "public words"
    assert app.http.get(f"/api/v1/chats/share/{share_id}").status_code == 401
    # Bob can read the snapshot, never the chat itself.
    assert app.http.get(f"/api/v1/chats/{chat['id']}", headers=bob).status_code == 404
    assert app.http.delete(f"/api/v1/chats/{chat['id']}/share", headers=alice).json() is True
    assert app.http.get(f"/api/v1/chats/share/{share_id}", headers=bob).status_code == 404
    assert app.http.get(f"/api/v1/chats/{chat['id']}", headers=alice).json()["share_id"] is None


def test_concurrent_updates_to_one_chat_lose_nothing(app, accounts):
    headers = h(accounts, "alice")
    chat = new_chat(app, headers, "busy")
    errors = []

    def writer(tag):
        with httpx.Client(base_url=app.base, timeout=60) as client:
            for i in range(15):
                mid = f"{tag}{i}"
                body = {"chat": {"history": {"messages": {mid: {"id": mid, "content": mid}}, "currentId": mid}}}
                r = client.post(f"/api/v1/chats/{chat['id']}", json=body, headers=headers)
                if r.status_code != 200:
                    errors.append(r.text)

    threads = [threading.Thread(target=writer, args=(t,)) for t in "abc"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    messages = app.http.get(f"/api/v1/chats/{chat['id']}", headers=headers).json()["chat"]["history"]["messages"]
    assert len(messages) == 45


def test_hostile_strings_are_stored_verbatim(app, accounts):
    headers = h(accounts, "alice")
    for text in HOSTILE:
        chat = new_chat(app, headers, text, {"x": {"id": "x", "content": text}})
        got = app.http.get(f"/api/v1/chats/{chat['id']}", headers=headers).json()
        assert got["title"] == text and got["chat"]["history"]["messages"]["x"]["content"] == text
        found = app.http.get("/api/v1/chats/search", params={"text": text}, headers=headers).json()
        assert chat["id"] in {c["id"] for c in found}
    user = signup(app, HOSTILE[0], "o'brien+x@example.com")
    assert user["name"] == HOSTILE[0]
    me = app.http.get("/api/v1/auths/", headers=auth(user["token"])).json()
    assert me["email"] == "o'brien+x@example.com"
    for bad_email in ["' OR 1=1 --", "a@b", "x" * 400 + "@example.com", "a\x00b@example.com"]:
        r = app.http.post("/api/v1/auths/signup", json={"name": "n", "email": bad_email, "password": "p"})
        assert r.status_code == 400, bad_email
    # The tables are all still there.
    assert app.http.get("/api/v1/users/", headers=h(accounts, "admin")).json()["total"] >= 3


# --- files --------------------------------------------------------------------


def test_file_upload_list_download_delete(app, accounts):
    headers = h(accounts, "bob")
    r = upload(app, headers, "report.txt", b"line one\nline two\n", metadata={"chat_id": "c1"})
    assert r.status_code == 200, r.text
    file = r.json()
    assert file["filename"] == "report.txt" and file["meta"]["size"] == 18
    assert file["meta"]["content_type"] == "text/plain" and file["meta"]["data"] == {"chat_id": "c1"}
    assert file["hash"] == hashlib.sha256(b"line one\nline two\n").hexdigest()
    listed = app.http.get("/api/v1/files/", headers=headers).json()
    assert file["id"] in {f["id"] for f in listed["items"]} and listed["total"] >= 1
    assert app.http.get(f"/api/v1/files/{file['id']}", headers=headers).json()["id"] == file["id"]
    content = app.http.get(f"/api/v1/files/{file['id']}/content", headers=headers)
    assert content.content == b"line one\nline two\n"
    assert content.headers["content-type"].startswith("text/plain")
    attached = app.http.get(f"/api/v1/files/{file['id']}/content?attachment=true", headers=headers)
    assert attached.headers["content-disposition"] == "attachment; filename*=UTF-8''report.txt"
    binary = upload(app, headers, "blob.bin", bytes(range(256)) * 4, "application/octet-stream").json()
    assert app.http.get(f"/api/v1/files/{binary['id']}/content", headers=headers).content == bytes(range(256)) * 4
    assert app.http.delete(f"/api/v1/files/{file['id']}", headers=headers).status_code == 200
    assert app.http.get(f"/api/v1/files/{file['id']}", headers=headers).status_code == 404
    assert app.http.get(f"/api/v1/files/{file['id']}/content", headers=headers).status_code == 404


def test_file_limits_and_hostile_names(app, accounts):
    headers = h(accounts, "bob")
    limit = 1 << 20
    assert upload(app, headers, "max.bin", b"x" * limit).status_code == 200
    assert upload(app, headers, "over.bin", b"x" * (limit + 1)).status_code == 413
    for name, stored in [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("x" * 1000 + ".txt", "x" * 255),
        (HOSTILE[0], HOSTILE[0]),
    ]:
        r = upload(app, headers, name, b"data")
        assert r.status_code == 200, (name, r.text)
        assert r.json()["filename"] == stored
        got = app.http.get(f"/api/v1/files/{r.json()['id']}/content?attachment=true", headers=headers)
        assert got.content == b"data" and "\n" not in got.headers["content-disposition"]
    # httpx percent-encodes control characters in names; a raw body need not.
    raw = (
        b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\x00b\x1b.txt\"\r\n\r\ndata\r\n--B--\r\n"
    )
    r = app.http.post("/api/v1/files/", content=raw, headers={**headers, "content-type": "multipart/form-data; boundary=B"})
    assert r.status_code == 200 and r.json()["filename"] == "ab.txt", r.text
    assert app.http.post("/api/v1/files/", json={"file": "x"}, headers=headers).status_code == 400
    assert app.http.post(
        "/api/v1/files/", content=b"--b\r\nbroken", headers={**headers, "content-type": "multipart/form-data; boundary=b"}
    ).status_code == 400
    assert upload(app, headers, "m.txt", b"x", metadata=None).status_code == 200
    bad_meta = app.http.post(
        "/api/v1/files/", files={"file": ("a", b"x")}, data={"metadata": "{not json"}, headers=headers
    )
    assert bad_meta.status_code == 400


# --- access control -------------------------------------------------------------


def test_every_route_needs_a_token(app, accounts):
    routes = [
        ("GET", "/api/v1/auths/"), ("POST", "/api/v1/auths/update/password"), ("POST", "/api/v1/auths/api_key"),
        ("GET", "/api/v1/auths/admin/config"), ("GET", "/api/v1/users/"), ("GET", "/api/v1/users/x"),
        ("POST", "/api/v1/users/x/update"), ("DELETE", "/api/v1/users/x"), ("GET", "/api/v1/users/user/settings"),
        ("GET", "/api/v1/chats/"), ("POST", "/api/v1/chats/new"), ("GET", "/api/v1/chats/x"),
        ("POST", "/api/v1/chats/x"), ("DELETE", "/api/v1/chats/x"), ("POST", "/api/v1/chats/x/archive"),
        ("POST", "/api/v1/chats/x/share"), ("GET", "/api/v1/chats/share/x"), ("GET", "/api/v1/chats/x/tags"),
        ("GET", "/api/v1/files/"), ("POST", "/api/v1/files/"), ("GET", "/api/v1/files/x"),
        ("GET", "/api/v1/files/x/content"), ("DELETE", "/api/v1/files/x"), ("GET", "/api/models"),
        ("POST", "/api/v1/images/generations"), ("POST", "/api/v1/audio/speech"),
    ]
    for method, path in routes:
        r = app.http.request(method, path)
        assert r.status_code == 401, (method, path, r.status_code)
        assert "detail" in r.json()


def test_admin_routes_refuse_users(app, accounts):
    user = h(accounts, "alice")
    for method, path in [
        ("GET", "/api/v1/users/"), ("GET", f"/api/v1/users/{accounts['bob']['id']}"),
        ("POST", f"/api/v1/users/{accounts['bob']['id']}/update"), ("DELETE", f"/api/v1/users/{accounts['bob']['id']}"),
        ("GET", "/api/v1/auths/admin/config"), ("POST", "/api/v1/auths/admin/config"), ("POST", "/api/v1/auths/add"),
        ("GET", f"/api/v1/chats/list/user/{accounts['bob']['id']}"), ("GET", "/api/v1/chats/all/db"),
        ("DELETE", "/api/v1/files/all"),
    ]:
        r = app.http.request(method, path, json={"role": "admin"}, headers=user)
        assert r.status_code == 403, (method, path, r.status_code)
    assert app.http.get("/api/v1/auths/", headers=user).json()["role"] == "user"


def test_no_user_reaches_another_users_chats_or_files(app, accounts):
    alice, bob = h(accounts, "alice"), h(accounts, "bob")
    chat = new_chat(app, alice, "alice private", {"m": {"id": "m", "content": "secret"}})
    file = upload(app, alice, "alice.txt", b"alice secret").json()
    cid, fid = chat["id"], file["id"]
    attempts = [
        ("GET", f"/api/v1/chats/{cid}", None), ("POST", f"/api/v1/chats/{cid}", {"chat": {"title": "pwned"}}),
        ("DELETE", f"/api/v1/chats/{cid}", None), ("POST", f"/api/v1/chats/{cid}/archive", None),
        ("POST", f"/api/v1/chats/{cid}/pin", None), ("GET", f"/api/v1/chats/{cid}/pinned", None),
        ("POST", f"/api/v1/chats/{cid}/share", None), ("DELETE", f"/api/v1/chats/{cid}/share", None),
        ("GET", f"/api/v1/chats/{cid}/tags", None), ("POST", f"/api/v1/chats/{cid}/tags", {"name": "pwned"}),
        ("DELETE", f"/api/v1/chats/{cid}/tags", {"name": "x"}), ("POST", f"/api/v1/chats/{cid}/clone", None),
        ("GET", f"/api/v1/files/{fid}", None), ("GET", f"/api/v1/files/{fid}/content", None),
        ("DELETE", f"/api/v1/files/{fid}", None),
    ]
    for method, path, body in attempts:
        r = app.http.request(method, path, json=body, headers=bob)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
    assert cid not in {c["id"] for c in app.http.get("/api/v1/chats/list", headers=bob).json()}
    assert fid not in {f["id"] for f in app.http.get("/api/v1/files/", headers=bob).json()["items"]}
    assert cid not in {c["id"] for c in app.http.get("/api/v1/chats/search?text=alice", headers=bob).json()}
    got = app.http.get(f"/api/v1/chats/{cid}", headers=alice).json()
    assert got["title"] == "alice private" and got["archived"] is False and got["share_id"] is None
    assert app.http.get(f"/api/v1/files/{fid}/content", headers=alice).content == b"alice secret"
    # The admin reaches them only through the admin routes.
    admin = h(accounts, "admin")
    assert app.http.get(f"/api/v1/chats/{cid}", headers=admin).status_code == 404
    listed = app.http.get(f"/api/v1/chats/list/user/{accounts['alice']['id']}", headers=admin).json()
    assert cid in {c["id"] for c in listed}


def test_admin_config_round_trips(app, accounts):
    admin = h(accounts, "admin")
    config = app.http.get("/api/v1/auths/admin/config", headers=admin).json()
    assert config["DEFAULT_USER_ROLE"] == "pending" and config["ENABLE_SIGNUP"] is True
    assert app.http.post(
        "/api/v1/auths/admin/config", json={"DEFAULT_USER_ROLE": "admin"}, headers=admin
    ).status_code == 400
    changed = app.http.post("/api/v1/auths/admin/config", json={"DEFAULT_USER_ROLE": "user"}, headers=admin).json()
    assert changed["DEFAULT_USER_ROLE"] == "user"
    assert signup(app, "Eve", "eve@example.com")["role"] == "user"
    app.http.post("/api/v1/auths/admin/config", json={"DEFAULT_USER_ROLE": "pending", "ENABLE_SIGNUP": False}, headers=admin)
    closed = app.http.post("/api/v1/auths/signup", json={"name": "F", "email": "f@example.com", "password": "p"})
    assert closed.status_code == 403
    assert app.http.get("/api/config").json()["features"]["enable_signup"] is False
    app.http.post("/api/v1/auths/admin/config", json={"ENABLE_SIGNUP": True}, headers=admin)


# --- images and audio -------------------------------------------------------------


def test_media_is_forwarded_to_the_upstream(app, accounts):
    headers = h(accounts, "alice")
    images = app.http.post("/api/v1/images/generations", json={"prompt": "a tern", "n": 2}, headers=headers)
    assert images.status_code == 200, images.text
    assert len(images.json()) == 2
    url = images.json()[0]["url"]
    assert app.http.get(url, headers=headers).content == PNG
    assert Upstream.seen[-1][1] == "Bearer sk-upstream"
    refused = app.http.post("/api/v1/images/generations", json={"prompt": "fail"}, headers=headers)
    assert refused.status_code == 400 and refused.json()["detail"] == "External: unsafe prompt"
    speech = app.http.post("/api/v1/audio/speech", json={"input": "hello", "voice": "alloy"}, headers=headers)
    assert speech.status_code == 200 and speech.content == b"ID3 spoken:hello"
    assert speech.headers["content-type"] == "audio/mpeg"
    heard = app.http.post(
        "/api/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF" + b"\0" * 100, "audio/wav")}, headers=headers
    )
    assert heard.status_code == 200 and heard.json()["text"].startswith("heard ")


def test_media_without_an_upstream_is_503(tmp_path):
    server = Server([*model_args(), "--jwt-secret", SECRET], tmp_path / "serve.log")
    try:
        with httpx.Client(base_url=server.base) as http:
            assert http.get("/api/config").json()["onboarding"] is True
            admin = http.post(
                "/api/v1/auths/signup", json={"name": "A", "email": "a@example.com", "password": "p"}
            ).json()
            assert "onboarding" not in http.get("/api/config").json()
            r = http.post("/api/v1/images/generations", json={"prompt": "x"}, headers=auth(admin["token"]))
            assert r.status_code == 503 and "--media-upstream" in r.json()["detail"]
            # A file at the default limit (25 MiB) fits a handler instance's
            # default memory (64 MiB) on the way in and out.
            data = os.urandom(25 << 20)
            headers = auth(admin["token"])
            r = http.post("/api/v1/files/", files={"file": ("big.bin", data)}, headers=headers, timeout=120)
            assert r.status_code == 200, r.text
            assert http.get(f"/api/v1/files/{r.json()['id']}/content", headers=headers, timeout=120).content == data
            r = http.post("/api/v1/files/", files={"file": ("big.bin", data + b"x")}, headers=headers, timeout=120)
            assert r.status_code == 413
    finally:
        server.stop()


def test_signin_failures_are_rate_limited_per_address(tmp_path):
    """50 failures from one address, each for a different account, close
    sign-in from that address (even for a right password) but not sign-up."""
    server = Server([*model_args(), "--jwt-secret", SECRET], tmp_path / "serve.log")
    try:
        with httpx.Client(base_url=server.base, timeout=60) as http:
            http.post("/api/v1/auths/signup", json={"name": "A", "email": "a@example.com", "password": "right"})
            for i in range(50):
                r = http.post("/api/v1/auths/signin", json={"email": f"guess{i}@example.com", "password": "x"})
                assert r.status_code == 400, (i, r.text)
            r = http.post("/api/v1/auths/signin", json={"email": "a@example.com", "password": "right"})
            assert r.status_code == 429 and "Too many failed sign-ins" in r.json()["detail"]
    finally:
        server.stop()


def test_password_and_name_limits(app, accounts):
    long_password = "p" * 257
    r = app.http.post("/api/v1/auths/signup", json={"name": "N", "email": "long@example.com", "password": long_password})
    assert r.status_code == 400 and "256 bytes" in r.json()["detail"]
    assert app.http.post(
        "/api/v1/auths/signup", json={"name": "N", "email": "long@example.com", "password": "p" * 256}
    ).status_code == 200
    r = app.http.post("/api/v1/auths/signup", json={"name": "n" * 201, "email": "n@example.com", "password": "p"})
    assert r.status_code == 400
    assert app.http.post(
        "/api/v1/auths/signup", json={"name": "n" * 200, "email": "n@example.com", "password": "p"}
    ).status_code == 200


# --- durability and schema ----------------------------------------------------------


def database_args(kind, tmp_path, request):
    if kind == "postgres":
        return ["--database-url", request.getfixturevalue("postgres").new_database()]
    return ["--data-dir", str(tmp_path / "data")]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_kill_9_during_updates_loses_no_acknowledged_write(kind, tmp_path, request):
    args = [*model_args(), "--jwt-secret", SECRET, *database_args(kind, tmp_path, request)]
    server = Server(args, tmp_path / "serve.log")
    http = httpx.Client(base_url=server.base, timeout=10)
    admin = http.post("/api/v1/auths/signup", json={"name": "A", "email": "a@example.com", "password": "p"}).json()
    headers = auth(admin["token"])
    chat_id = http.post("/api/v1/chats/new", json={"chat": {"title": "burst"}}, headers=headers).json()["id"]
    acknowledged = []

    def burst():
        for i in range(100000):
            mid = f"m{i}"
            body = {"chat": {"history": {"messages": {mid: {"id": mid}}}}}
            try:
                r = http.post(f"/api/v1/chats/{chat_id}", json=body, headers=headers)
            except httpx.HTTPError:
                return
            if r.status_code == 200:
                acknowledged.append(mid)

    writer = threading.Thread(target=burst)
    writer.start()
    time.sleep(1.5)
    server.proc.send_signal(signal.SIGKILL)
    writer.join()
    server.proc.wait()
    http.close()
    assert len(acknowledged) > 10
    restarted = Server(args, tmp_path / "restart.log")
    try:
        with httpx.Client(base_url=restarted.base) as http:
            messages = http.get(f"/api/v1/chats/{chat_id}", headers=headers).json()["chat"]["history"]["messages"]
        missing = [m for m in acknowledged if m not in messages]
        assert not missing, f"{len(missing)} acknowledged updates lost"
    finally:
        restarted.stop()
    if kind == "sqlite":
        check = sqlite3.connect(tmp_path / "data" / "tern.db").execute("PRAGMA integrity_check").fetchone()
        assert check == ("ok",)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_database_from_a_newer_tern_is_refused(kind, tmp_path, request):
    args = [*model_args(), "--jwt-secret", SECRET, *database_args(kind, tmp_path, request)]
    Server(args, tmp_path / "first.log").stop()
    if kind == "sqlite":
        with sqlite3.connect(tmp_path / "data" / "tern.db") as db:
            db.execute("UPDATE tern_schema SET version = version + 1")
    else:
        url = args[args.index("--database-url") + 1]
        name = url.split("/")[3].split("?")[0]
        request.getfixturevalue("postgres").sql(name, "UPDATE tern_schema SET version = version + 1")
    proc = subprocess.run(
        [str(tern_binary()), "serve", "--addr", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "newer than this tern" in proc.stderr


def test_the_signing_secret_is_generated_once_and_kept(tmp_path):
    data = tmp_path / "data"
    args = [*model_args(), "--data-dir", str(data)]
    server = Server(args, tmp_path / "one.log")
    with httpx.Client(base_url=server.base) as http:
        admin = http.post("/api/v1/auths/signup", json={"name": "A", "email": "a@example.com", "password": "p"}).json()
    server.stop()
    secret = (data / "jwt-secret").read_text()
    assert len(secret) == 64 and oct((data / "jwt-secret").stat().st_mode & 0o777) == "0o600"
    again = Server(args, tmp_path / "two.log")
    try:
        with httpx.Client(base_url=again.base) as http:
            assert http.get("/api/v1/auths/", headers=auth(admin["token"])).status_code == 200
    finally:
        again.stop()
    assert (data / "jwt-secret").read_text() == secret
