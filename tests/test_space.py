"""Space readiness: the README's front matter, requirements.txt, how the app launches and stores runs,
and whose Hub account a push acts as when strangers can reach the app.

The hosting tests start `python app.py` in a subprocess with the environment a Space (or a shared
server, or a person at their own machine) gives it, and talk to it over HTTP on loopback as a
visitor's browser or program would, with the Hub played by tests/hub_server.py.
"""

import contextlib
import functools
import os
import re
import shutil
import subprocess
import sys
import time
from importlib.metadata import requires
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import gradio
import httpx
import pytest
import tomllib
import yaml
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from hub_server import FakeHub
from packaging.requirements import Requirement

import app
from conftest import free_port
from models.run_store import RunStore
from ui import session

ROOT = Path(__file__).resolve().parent.parent

# Whose Hub account acts: the server is logged in as its owner; a visitor brings their own token.
OWNER, OWNER_TOKEN = "owner-8c1f", "hf_OwnerOfThisServer0123456789abcdefX"
VISITOR, VISITOR_TOKEN = "visitor", "hf_VisitorOwnWriteToken0123456789abcd"
SPACE_ID, SPACE_HOST = "transfer-org/transfer-studio", "transfer-org-transfer-studio.hf.space"
OAUTH_CLIENT_ID = "00000000-test-client"
SIGN_IN_OR_PASTE = "Sign in with Hugging Face or paste your own token with write access"
PASTE = "Paste your own Hugging Face token with write access"
# What a started app does not inherit from this environment: a Hub login, Space or Gradio settings.
NOT_INHERITED = ("HF_", "HUGGING_FACE_", "SPACE_", "OAUTH_", "GRADIO_", "TRANSFER_STUDIO_DATA_DIR", "SYSTEM",
                 "OPENID_PROVIDER_URL")


def front_matter_and_body() -> tuple[dict, str]:
    text = (ROOT / "README.md").read_text()
    match = re.match(r"^---\n(.*?)\n---\n(.*)$", text, re.DOTALL)
    assert match, "README.md must start with the Space front matter"
    return yaml.safe_load(match.group(1)), match.group(2)


def test_readme_front_matter_configures_a_gradio_space_with_login():
    meta, _ = front_matter_and_body()
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert meta["sdk_version"] == gradio.__version__
    assert meta["hf_oauth"] is True and set(meta["hf_oauth_scopes"]) == {"write-repos", "manage-repos"}
    assert {"title", "emoji", "colorFrom", "colorTo", "license"} <= set(meta)


def test_readme_first_section_is_the_two_setup_commands():
    _, body = front_matter_and_body()
    first = body.split("\n## ")[1]
    assert first.startswith("Start")
    commands = re.findall(r"```bash\n(.*?)\n```", first, re.DOTALL)
    assert commands == ['pip install -e . && python app.py', 'pip install -e ".[test]" && python -m pytest']


def project_dependencies() -> list[Requirement]:
    return [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]


def test_pinned_gradio_matches_the_space_sdk_version():
    meta, _ = front_matter_and_body()
    gradio_dependency = next(d for d in project_dependencies() if d.name == "gradio")
    assert f">={meta['sdk_version'].rsplit('.', 1)[0]}" in str(gradio_dependency.specifier)
    assert gradio_dependency.specifier.contains(meta["sdk_version"])


def test_requirements_txt_covers_every_runtime_dependency():
    dependencies = project_dependencies()
    names = {d.name.lower() for d in dependencies} - {"gradio", "onnxruntime-gpu"}
    # The Space's SDK brings plain gradio (a CPU Space takes plain onnxruntime); what gradio's extras add
    # (oauth: the Space's sign-in, without which it does not start) must come from requirements.txt.
    extras = next(d for d in dependencies if d.name == "gradio").extras
    assert "oauth" in extras
    for line in requires("gradio"):
        extra = Requirement(line)
        if extra.marker and "extra" in str(extra.marker) and any(extra.marker.evaluate({"extra": e}) for e in extras):
            names.add(extra.name.lower())
    lines = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line and line[0].isalpha()]
    assert {Requirement(line).name.lower() for line in lines} == names


def test_launch_listens_on_loopback_unless_the_environment_says_otherwise(monkeypatch):
    for name in ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "TRANSFER_STUDIO_MAX_UPLOAD"):
        monkeypatch.delenv(name, raising=False)
    assert app.launch_options() == {"server_name": "127.0.0.1", "server_port": 7860, "max_file_size": "1gb"}
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7000")
    monkeypatch.setenv("TRANSFER_STUDIO_MAX_UPLOAD", "200mb")
    assert app.launch_options() == {"server_name": "0.0.0.0", "server_port": 7000, "max_file_size": "200mb"}


def test_runs_live_under_the_data_directory_from_the_environment():
    assert session.STORE.root == Path(os.environ["TRANSFER_STUDIO_DATA_DIR"]).resolve()


def test_a_shared_deployment_is_a_space_or_a_server_listening_beyond_loopback_or_one_said_to_be(monkeypatch):
    monkeypatch.setattr(session, "ON_SPACE", False)
    monkeypatch.delenv(session.SHARED_ENV, raising=False)
    for host, shared in [("127.0.0.1", False), ("localhost", False), ("::1", False), ("[::1]", False),
                         ("0.0.0.0", True), ("::", True), ("192.168.1.20", True), ("studio.example.org", True)]:
        monkeypatch.setenv("GRADIO_SERVER_NAME", host)
        assert session.is_shared() is shared, host
        assert session.is_local(None) is not shared, host  # a loopback caller of a shared app is a stranger too
    monkeypatch.delenv("GRADIO_SERVER_NAME")
    assert session.is_shared() is False and session.is_local(None)  # `python app.py` listens on 127.0.0.1
    monkeypatch.setenv(session.SHARED_ENV, "1")  # on loopback behind a proxy on the same machine
    assert session.is_shared() is True and not session.is_local(None)
    monkeypatch.delenv(session.SHARED_ENV)
    monkeypatch.setattr(session, "ON_SPACE", True)
    assert session.is_shared() is True and not session.is_local(None)


@pytest.mark.parametrize("where", ["own machine", "shared server", "space"])
def test_only_a_visitors_own_credentials_count_on_a_shared_deployment(where, monkeypatch):
    for name in ("SYSTEM", "SPACE_ID", "OAUTH_CLIENT_ID", "GRADIO_SERVER_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(session, "ON_SPACE", where == "space")
    if where == "shared server":
        monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    if where == "space":
        monkeypatch.setenv("SYSTEM", "spaces")
        monkeypatch.setenv("SPACE_ID", SPACE_ID)
        monkeypatch.setenv("OAUTH_CLIENT_ID", OAUTH_CLIENT_ID)
    signed_in = gradio.OAuthToken(token=VISITOR_TOKEN, scope="write-repos", expires_at=0)

    assert session.hub_token(f" {VISITOR_TOKEN} ", signed_in, None) == VISITOR_TOKEN  # typed wins, stripped
    if where == "own machine":
        assert session.hub_token("", None, None) is None  # None: the machine's own login
        assert session.hub_token("", signed_in, None) is None  # no real sign-in here: never taken
        assert "HF_TOKEN is used otherwise" in session.hub_token_label()
    elif where == "shared server":
        for oauth in (None, signed_in):  # a sign-in off a Space would be Gradio's mock of the server's account
            with pytest.raises(gradio.Error, match=PASTE):
                session.hub_token("  ", oauth, None)
        assert "required" in session.hub_token_label() and not session.hub_sign_in()
    else:
        assert session.hub_token("", signed_in, None) == VISITOR_TOKEN
        with pytest.raises(gradio.Error, match=SIGN_IN_OR_PASTE):
            session.hub_token("", None, None)
        assert "your sign-in is used otherwise" in session.hub_token_label() and session.hub_sign_in()


# ---------------------------------------------------------------------------------------------
# Hosting: `python app.py` as a Space, as a server shared on a network, and on one's own machine


class App:
    """`python app.py` started from the repository root with `env` on top of this environment, less its Hub
    login and Space settings; `url` (on loopback) waits until the page answers."""

    def __init__(self, folder: Path, env: dict[str, str]):
        self.log, self.data = folder / "app.log", folder / "data"
        port = free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith(NOT_INHERITED)}
        base.update(GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False", HF_HOME=str(folder / "hf_home"),
                    HF_HUB_DISABLE_XET="1", TRANSFER_STUDIO_DATA_DIR=str(self.data))
        self._url = f"http://127.0.0.1:{port}"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env={**base, **env}, stdout=log,
                                            stderr=subprocess.STDOUT)

    @functools.cached_property
    def url(self) -> str:
        deadline = time.monotonic() + 240  # two slow cores, torch and gradio to import
        while self.process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self._url + "/", timeout=5).status_code == 200:
                    return self._url
            time.sleep(0.5)
        pytest.fail(f"python app.py did not start (exit status {self.process.poll()}):\n{self.log.read_text()[-3000:]}")

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def hub():
    with FakeHub({OWNER_TOKEN: (OWNER, "write"), VISITOR_TOKEN: (VISITOR, "write")}) as server:
        yield server


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished run folder (tests/fixtures/old-run); its model's bytes are only carried here, never run."""
    run = tmp_path_factory.mktemp("space_run") / "run"
    shutil.copytree(ROOT / "tests" / "fixtures" / "old-run", run, ignore=shutil.ignore_patterns("data"))
    (run / "model.onnx").write_bytes(b"stands in for an exported model")
    return run


@pytest.fixture(scope="module")
def hosted(tmp_path_factory, hub) -> dict[str, App]:
    """The app hosted three ways, each logged in to the Hub as its owner (HF_TOKEN), started together:

    - "space": as a Space runs it, with the Space's variables, OAuth ones included (hf_oauth: true);
    - "shared server": on a machine, reachable from its network (GRADIO_SERVER_NAME=0.0.0.0), not a Space;
    - "own machine": `python app.py` as the README says, on loopback.
    """
    space = {"SYSTEM": "spaces", "SPACE_ID": SPACE_ID, "SPACE_HOST": SPACE_HOST,
             "SPACE_AUTHOR_NAME": SPACE_ID.split("/")[0], "SPACE_REPO_NAME": SPACE_ID.split("/")[1],
             "OAUTH_CLIENT_ID": OAUTH_CLIENT_ID, "OAUTH_CLIENT_SECRET": "test-client-secret",
             "OAUTH_SCOPES": "openid profile write-repos manage-repos", "OPENID_PROVIDER_URL": hub.url,
             "GRADIO_SERVER_NAME": "0.0.0.0"}
    ways = {"space": space, "shared server": {"GRADIO_SERVER_NAME": "0.0.0.0"}, "own machine": {}}
    apps: dict[str, App] = {}
    try:
        for name, env in ways.items():
            folder = tmp_path_factory.mktemp(name.replace(" ", "-"))
            apps[name] = App(folder, {"HF_ENDPOINT": hub.url, "HF_TOKEN": OWNER_TOKEN, **env})
        yield apps
    finally:
        for started in apps.values():
            started.close()


class Visitor:
    """A visitor with a gradio_client session: their run in the app's store, and everything the app told them.

    `cookie` is the app's session cookie after a sign-in (sign_in()); without it the visitor is anonymous.
    """

    def __init__(self, url: str, data_dir: Path, run_dir: Path, folder: Path, cookie: str | None = None):
        self.client = Client(url, verbose=False, analytics_enabled=False, download_files=str(folder),
                             headers={"Cookie": cookie} if cookie else None)
        self.run_id, path = RunStore(data_dir).new_run(self.client.session_hash)
        shutil.copytree(run_dir, path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("data"))
        self.client.predict(api_name="/share_runs")  # the page does this when the run picker opens
        self.heard: list[str] = [httpx.get(url + "/config").text]

    def share(self, api_name: str, repo_id: str, token: str = "") -> str:
        """Press Push (or Make a Space) with `token` in the token box; returns the message (an error's too)."""
        try:
            message = self.client.predict(self.run_id, repo_id, False, token, api_name=api_name)[0]
        except AppError as error:
            message = str(error)
        self.heard.append(message)
        return message


def sign_in(url: str, token: str) -> str:
    """ "Sign in with Hugging Face" on the Space as the Hub user of `token`; returns the app's session cookie.

    The browser's steps: the app sends it to the Hub's authorize page, the user approves there, and the
    Hub sends it back to https://<SPACE_HOST>/login/callback, which is this app on loopback.
    """
    login = httpx.get(url + "/login/huggingface", follow_redirects=False)
    cookie = login.headers["set-cookie"].split(";", 1)[0]  # Secure, so httpx would not send it back over http
    approved = httpx.get(login.headers["location"], headers={"Authorization": f"Bearer {token}"})
    assert approved.status_code == 302, approved.text
    callback = urlsplit(approved.headers["location"])
    assert callback.netloc == SPACE_HOST
    done = httpx.get(f"{url}{callback.path}?{callback.query}", headers={"Cookie": cookie}, follow_redirects=False)
    assert done.status_code in (302, 303, 307), done.text
    return done.headers["set-cookie"].split(";", 1)[0]


def owner_requests(hub: FakeHub, since: int) -> list:
    return [r for r in hub.requests[since:] if any(OWNER_TOKEN in v for _, v in r.headers)]


def test_the_app_starts_as_a_space_and_its_sign_in_goes_to_the_hub(hosted, hub):
    url = hosted["space"].url
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "Transfer Studio" in page.text
    config = httpx.get(url + "/config").json()
    assert any(c.get("props", {}).get("value") == "Sign in with Hugging Face" for c in config["components"])

    login = httpx.get(url + "/login/huggingface", follow_redirects=False)
    assert login.status_code in (302, 303, 307), login.text
    target = urlsplit(login.headers["location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{hub.url}/oauth/authorize"
    query = parse_qs(target.query)
    assert query["client_id"] == [OAUTH_CLIENT_ID] and query["response_type"] == ["code"]
    assert query["redirect_uri"][0].startswith(f"https://{SPACE_HOST}/login/callback")
    assert {"write-repos", "manage-repos"} <= set(query["scope"][0].split())


def test_on_a_space_a_visitor_without_credentials_is_asked_to_sign_in_and_nothing_is_pushed(
        hosted, hub, run_dir, tmp_path):
    url, data = hosted["space"].url, hosted["space"].data
    visitor = Visitor(url, data, run_dir, tmp_path)
    before = len(hub.requests)
    assert SIGN_IN_OR_PASTE in visitor.share("/push_to_hub", f"{OWNER}/hijacked")
    assert SIGN_IN_OR_PASTE in visitor.share("/make_space", f"{OWNER}/space-hijack")
    assert SIGN_IN_OR_PASTE in visitor.share("/push_to_hub", "someone-else/x")  # before: a 403 naming the owner
    assert hub.requests[before:] == []  # nothing reached the Hub, so nothing was created
    assert ("model", f"{OWNER}/hijacked") not in hub.repos and ("space", f"{OWNER}/space-hijack") not in hub.repos
    assert not any(OWNER in text for text in visitor.heard)
    assert "your sign-in is used otherwise" in visitor.heard[0]  # the token box's label


def test_on_a_space_a_visitor_pushes_as_themselves_with_a_typed_token_or_their_sign_in(
        hosted, hub, run_dir, tmp_path):
    url, data = hosted["space"].url, hosted["space"].data
    before = len(hub.requests)
    typed = Visitor(url, data, run_dir, tmp_path / "typed")
    assert "Pushed to" in typed.share("/push_to_hub", f"{VISITOR}/typed", VISITOR_TOKEN)
    # Another namespace is refused as the visitor's own push (before, the 403 named the server's account).
    assert f"'{VISITOR}' cannot push there" in typed.share("/push_to_hub", "someone-else/x", VISITOR_TOKEN)
    signed_in = Visitor(url, data, run_dir, tmp_path / "signed-in", cookie=sign_in(url, VISITOR_TOKEN))
    assert "Space pushed" in signed_in.share("/make_space", f"{VISITOR}/signed-in-space")
    assert "Pushed to" in signed_in.share("/push_to_hub", f"{VISITOR}/signed-in")

    assert "model.onnx" in hub.repo(f"{VISITOR}/typed").files
    assert hub.repo(f"{VISITOR}/signed-in-space", "space").sdk == "gradio"
    assert "model.onnx" in hub.repo(f"{VISITOR}/signed-in").files
    sign_in_token = hub.signed_in[-1]  # the pushes after the sign-in used the token it issued
    assert any(f"Bearer {sign_in_token}" in v for r in hub.requests[before:] if "/commit/" in r.path for _, v in r.headers)
    assert ("model", "someone-else/x") not in hub.repos
    assert owner_requests(hub, before) == []
    assert not any(OWNER in text for text in typed.heard + signed_in.heard)


def test_on_a_shared_server_only_a_typed_token_pushes_and_there_is_no_sign_in(hosted, hub, run_dir, tmp_path):
    url, data = hosted["shared server"].url, hosted["shared server"].data
    before = len(hub.requests)
    # Off a Space, Gradio's sign-in would be the server's own account: it is not offered.
    config = httpx.get(url + "/config").json()
    assert not any(c.get("props", {}).get("value") == "Sign in with Hugging Face" for c in config["components"])
    assert httpx.get(url + "/login/huggingface", follow_redirects=False).status_code == 404
    blank = Visitor(url, data, run_dir, tmp_path / "blank")
    assert PASTE in blank.share("/push_to_hub", f"{OWNER}/hijacked")
    assert PASTE in blank.share("/make_space", f"{OWNER}/space-hijack")
    assert hub.requests[before:] == []
    assert "required: pushes act as you" in blank.heard[0]

    typed = Visitor(url, data, run_dir, tmp_path / "typed")
    assert "Pushed to" in typed.share("/push_to_hub", f"{VISITOR}/from-a-shared-server", VISITOR_TOKEN)
    assert "model.onnx" in hub.repo(f"{VISITOR}/from-a-shared-server").files
    assert owner_requests(hub, before) == [] and ("model", f"{OWNER}/hijacked") not in hub.repos
    assert not any(OWNER in text for text in blank.heard + typed.heard)


def test_on_ones_own_machine_the_machines_login_still_pushes(hosted, hub, run_dir, tmp_path):
    url, data = hosted["own machine"].url, hosted["own machine"].data
    me = Visitor(url, data, run_dir, tmp_path)
    assert "HF_TOKEN is used otherwise" in me.heard[0]
    assert "Pushed to" in me.share("/push_to_hub", f"{OWNER}/from-my-machine")
    assert "model.onnx" in hub.repo(f"{OWNER}/from-my-machine").files


def test_an_app_launched_beyond_loopback_is_shared_whatever_the_environment_says(monkeypatch, run_dir, tmp_path):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)  # the page was built as if on loopback
    port = free_port()
    app.demo.queue()
    app.demo.launch(server_name="0.0.0.0", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        visitor = Visitor(f"http://127.0.0.1:{port}", session.STORE.root, run_dir, tmp_path)
        assert PASTE in visitor.share("/push_to_hub", "someone-else/x")
        load = next(d for d in app.demo.config["dependencies"] if d["api_name"] == "token_box")
        label = httpx.post(f"http://127.0.0.1:{port}/gradio_api/run/predict",
                           json={"data": [], "fn_index": load["id"], "session_hash": visitor.client.session_hash})
        assert "required: pushes act as you" in label.json()["data"][0]["label"]  # the page's label follows suit
        # A caller on loopback (as a share link's tunnel or a proxy on this machine connects) names no server path.
        with pytest.raises(AppError) as refused:
            visitor.client.predict(handle_file(str(ROOT / "tests" / "fixtures" / "old-run" / "data" / "blue" / "blue_00.jpg")),
                                   str(run_dir), 3, api_name="/classify")
        assert refused.value.message == f"Unknown model {str(run_dir)!r}: give a run id from this app, or hf://user/name"
    finally:
        app.demo.close()


def test_every_setting_the_code_reads_is_documented_in_the_readme():
    sources = [p for folder in ("ui", "models", "trainer") for p in (ROOT / folder).rglob("*.py")] + [ROOT / "app.py"]
    settings = {name for p in sources for name in re.findall(r"TRANSFER_STUDIO_[A-Z_]+[A-Z]", p.read_text())}
    _, body = front_matter_and_body()
    hosting = body.split("\n## Hosting it\n")[1].split("\n## ")[0]
    assert len(settings) >= 9 and {name for name in settings if f"`{name}`" not in hosting} == set()
