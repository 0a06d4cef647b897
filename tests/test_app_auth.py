"""Sign-in over real HTTP: ``python -m app`` with credentials refuses anonymous browsers, HTTP clients and the API,
and serves those who sign in (gradio_client ``auth=``, or the /login form)."""

from __future__ import annotations

import http.cookiejar
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

import pytest
from PIL import Image

from app.access import AUTH_ENV, AUTH_FILE_ENV
from tests.pipeline_helpers import ROOT, AppServer, face_like, make_pair

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AuthenticationError  # noqa: E402

FILE_USERS = {"ada": "correct horse battery staple", "grace": "pass:with:colons"}   # docs/app.md's example: ada
FLAG_USER = ("alan", "turing-1912")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("auth") / "tiny")


@pytest.fixture(scope="module")
def server(pair, tmp_path_factory):
    """Credentials from a file named in the environment (never on the command line) plus one --auth."""
    root = tmp_path_factory.mktemp("auth_server")
    users = root / "users.txt"
    users.write_text("# who may use the demo\n" + "".join(f"{u}:{p}\n" for u, p in FILE_USERS.items()))
    with pytest.MonkeyPatch.context() as env:
        env.delenv(AUTH_ENV, raising=False)
        env.setenv(AUTH_FILE_ENV, str(users))
        app = AppServer(["--tokenizer", str(pair[0]), "--prior", str(pair[1]), "--auth", ":".join(FLAG_USER)],
                        root / "server.log")
    yield app
    app.stop()


def status(url: str, data: bytes | None = None, opener=None, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with (opener or urllib.request.build_opener()).open(request, timeout=60) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def test_anonymous_http_gets_the_sign_in_page_and_nothing_else(server):
    code, page = status(server.url)
    assert code == 200 and '"auth_required":true' in page.replace(" ", "")   # the sign-in form
    assert "EdVAE generator" not in page                                      # not the app
    example = ROOT / "app" / "examples" / "face_1_000954.png"
    for path in ("config", "gradio_api/info", f"gradio_api/file={example}"):
        code, body = status(server.url + path)
        assert code == 401 and "Not authenticated" in body, path
    call = json.dumps({"data": ["custom", 1]}).encode()
    code, _ = status(server.url + "gradio_api/call/generate", call, headers={"Content-Type": "application/json"})
    assert code == 401
    join = json.dumps({"data": ["custom", 1, 1.0, 0, 1.0, 0, -1, 1.0], "fn_index": 0, "session_hash": "x"}).encode()
    code, _ = status(server.url + "gradio_api/queue/join", join, headers={"Content-Type": "application/json"})
    assert code == 401


def test_api_clients_without_the_right_password_are_refused(server):
    with pytest.raises(AuthenticationError, match="credentials were not provided"):
        Client(server.url, verbose=False)
    for auth in (("ada", "wrong"), ("ada", FLAG_USER[1]), ("nobody", "turing-1912"), (FLAG_USER[0], "")):
        with pytest.raises(ValueError, match="Could not login"):
            Client(server.url, auth=auth, verbose=False)
    form = urllib.parse.urlencode({"username": "grace", "password": "pass"}).encode()
    code, body = status(server.url + "login", form)
    assert code == 400 and "Incorrect credentials" in body


def test_signed_in_users_from_the_file_and_the_flag_use_every_endpoint(server, tmp_path):
    face = tmp_path / "face.png"
    Image.fromarray(face_like(32)).save(face)
    for user, password in [*FILE_USERS.items(), FLAG_USER]:
        client = Client(server.url, auth=(user, password), verbose=False)
        gallery, seed, files = client.predict("custom", 2, seed=3, api_name="/generate")
        assert len(gallery) == 2 and seed == 3 and len(files) == 2
    seen, *_ = client.predict("custom", handle_file(str(face)), api_name="/reconstruct")    # an upload, signed in
    with Image.open(seen) as img:
        assert img.size == (32, 32)


def test_sign_in_over_plain_http_opens_the_page(server):
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    form = urllib.parse.urlencode({"username": FLAG_USER[0], "password": FLAG_USER[1]}).encode()
    code, body = status(server.url + "login", form, opener)
    assert code == 200 and json.loads(body) == {"success": True}
    code, config = status(server.url + "config", opener=opener)
    assert code == 200 and "EdVAE generator" in config
    assert "Sign in with the user name and password" in status(server.url + "config")[1]   # the sign-in message


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_passwords_from_the_environment_stay_out_of_the_process_list(server):
    cmdline = open(f"/proc/{server.proc.pid}/cmdline", "rb").read().decode()
    assert not any(p in cmdline for p in FILE_USERS.values())


def test_docs_sign_in_example_runs(server):
    """The gradio_client sign-in example of docs/app.md, against this server."""
    text = (ROOT / "docs" / "app.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "auth=" in block)
    assert "http://127.0.0.1:7860/" in code and '"faces"' in code
    namespace: dict = {}
    exec(compile(code.replace("http://127.0.0.1:7860/", server.url).replace('"faces"', '"custom"'),
                 "docs/app.md", "exec"), namespace)


def test_open_on_purpose_warns_in_the_log_and_on_the_page(pair, tmp_path, monkeypatch):
    """--host 0.0.0.0 --no-auth: served (the operator said so), with the warning in both places."""
    for name in (AUTH_ENV, AUTH_FILE_ENV):
        monkeypatch.delenv(name, raising=False)
    app = AppServer(["--tokenizer", str(pair[0]), "--prior", str(pair[1]), "--host", "0.0.0.0", "--no-auth"],
                    tmp_path / "server.log")
    try:
        warning = "--host 0.0.0.0 makes the app reachable from other machines and was started with --no-auth"
        assert f"app: {warning}" in app.output()                         # the log line
        code, config = status(app.url + "config")
        assert code == 200 and warning in config and "open-warning" in config
    finally:
        app.stop()
