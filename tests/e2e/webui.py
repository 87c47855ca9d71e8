"""What the Open WebUI frontend tests share: the fetched frontend, and a
`tern serve --webui` that can be restarted on the same data."""

import os
import pathlib
import subprocess

import pytest

from conftest import BUNDLED, FIXTURE, ROOT, Server

SECRET = "webui-test-signing-secret-0123456789"


def webui_dir():
    """Open WebUI's built frontend, fetched from PyPI by scripts/fetch-webui
    when missing (into target/webui, gitignored)."""
    try:
        out = subprocess.run(
            [str(ROOT / "scripts" / "fetch-webui")], check=True, cwd=ROOT, capture_output=True, text=True
        )
    except subprocess.CalledProcessError as e:
        reason = f"scripts/fetch-webui failed: {e.stderr.strip()[-500:]}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return ROOT / out.stdout.strip().splitlines()[-1]


class WebuiServer:
    """`tern serve --webui` on one database; `restart` keeps the data."""

    def __init__(self, tmp: pathlib.Path, database_url=None, model=None):
        self.tmp = tmp
        self.args = ["--webui", str(webui_dir()), "--jwt-secret", SECRET, "--data-dir", str(tmp / "data")]
        # The model to serve: given, else the bundled one (the fixture until it exists).
        self.model = model or (BUNDLED if BUNDLED.exists() else FIXTURE)
        self.args += ["--model", str(self.model)]
        if database_url:
            self.args += ["--database-url", database_url]
        self.runs = 0
        self.server = self._start()

    def _start(self, port=None):
        self.runs += 1
        return Server(self.args, self.tmp / f"serve-{self.runs}.log", port=port)

    def restart(self, model=None):
        """Stops the server and starts it again on the same port (the
        browser's storage belongs to the origin) and data."""
        port = self.server.port
        self.server.stop()
        if model:
            i = self.args.index("--model") if "--model" in self.args else None
            if i is None:
                self.args += ["--model", str(model)]
            else:
                self.args[i + 1] = str(model)
        self.server = self._start(port)

    @property
    def base(self):
        return self.server.base

    def running(self):
        return self.server.json("GET", "/health")[2]["running"]

    def stop(self):
        self.server.stop()


def start(request, tmp_path_factory, name):
    """A `WebuiServer` on the database `request.param` names (`sqlite`, or
    a fresh database of the session's PostgreSQL)."""
    tmp = tmp_path_factory.mktemp(f"{name}-{request.param}")
    url = request.getfixturevalue("postgres").new_database() if request.param == "postgres" else None
    server = WebuiServer(tmp, database_url=url)
    server.kind, server.tmp = request.param, tmp
    return server
