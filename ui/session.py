"""Who a visitor is, and what the app keeps per visitor: runs, uploads, the stop flag of their training.

Everything kept per visitor is keyed by `visitor(request)`. A browser gets a visitor key from the
server on page load (`claim_visitor`), signed with a secret kept in the data folder and stored in
the browser (gr.BrowserState), so its runs survive a reload and a server restart. Programs (the
API) have no browser storage: their key is their Gradio session.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
from collections import OrderedDict
from pathlib import Path

import gradio as gr

from models.run_store import RunStore
from models.serving import ModelServer
from ui.errors import refusal
from ui.limits import LIMITS, ON_SPACE

LOOPBACK = ("127.0.0.1", "::1", "localhost")
# For an app on loopback that strangers reach through a proxy on the same machine: every visitor is one.
SHARED_ENV = "TRANSFER_STUDIO_SHARED"

STORE = RunStore(max_age_hours=LIMITS.run_hours or None)
MODELS = ModelServer(STORE)
LOCAL_VISITOR = "local"  # calls without a browser session: a person at this machine, or the tests
BROWSER_KEY = "transfer-studio-visitor"  # the browser's localStorage entry holding its visitor token
_SESSION = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TOKEN = re.compile(r"^([0-9a-f]{32})\.([0-9a-f]{64})$")
_SECRET_FILE = ".visitor-secret"
_MAX_SESSIONS = 100_000  # remembered page sessions; the oldest are forgotten (their next page load claims again)
_sessions: OrderedDict[str, str] = OrderedDict()  # Gradio session -> visitor folder name
_sessions_lock = threading.Lock()


def _secret() -> bytes:
    """The server's signing secret, created once and kept with the runs, so tokens outlive a restart."""
    path = STORE.root / _SECRET_FILE
    if not path.is_file():
        STORE.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{_SECRET_FILE}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)  # the first writer wins; a concurrent one reads the winner's secret
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip().encode()


def browser_secret() -> str:
    """The BrowserState's own encryption key: fixed per data folder (a random one is lost at restart)."""
    return hmac.new(_secret(), b"browser-state", hashlib.sha256).hexdigest()[:32]


def _sign(key: str) -> str:
    return hmac.new(_secret(), key.encode(), hashlib.sha256).hexdigest()


def claim_visitor(token: str | None, request: gr.Request) -> str:
    """Page load: bind this page's session to the visitor its stored token names (or a new visitor).

    Returns the token for the browser to keep. A token is valid only with the server's signature,
    and the folder name is a hash of its key, so what a browser sends never becomes a path.
    """
    match = _TOKEN.match(token or "") if isinstance(token, str) else None
    if match and hmac.compare_digest(match.group(2), _sign(match.group(1))):
        key = match.group(1)
    else:
        key = secrets.token_hex(16)
        token = f"{key}.{_sign(key)}"
    name = "v-" + hashlib.sha256(key.encode()).hexdigest()[:32]
    session_hash = _session_of(request)
    if session_hash:
        with _sessions_lock:
            _sessions[session_hash] = name
            _sessions.move_to_end(session_hash)
            while len(_sessions) > _MAX_SESSIONS:
                _sessions.popitem(last=False)
    return token


def _session_of(request: gr.Request | None) -> str | None:
    session_hash = getattr(request, "session_hash", None)
    # "v-" names are the folders of browser visitors; a session may not pose as one.
    if session_hash and (not _SESSION.match(session_hash) or session_hash.startswith("v-")):
        raise refusal("This browser session is not valid; reload the page")
    return session_hash


def visitor(request: gr.Request | None) -> str:
    """The key of the visitor making this request: their runs, uploads and stop flag live under it."""
    session_hash = _session_of(request)
    if not session_hash:
        return LOCAL_VISITOR
    with _sessions_lock:
        return _sessions.get(session_hash, session_hash)


def is_local(request: gr.Request | None) -> bool:
    """Whether the visitor is a person at this machine, on an app no one else can reach: typed server paths and
    this machine's Hub login are for them; never on a Space, through a share link or on a server others reach."""
    host = (getattr(request, "client", None) and request.client.host) or "127.0.0.1"
    return host in LOOPBACK and not is_shared(request)


def _megabytes(size: int) -> str:
    return f"{size / 2**20:,.0f} MB"


def ensure_room(key: str) -> None:
    """Refuse new work when this visitor, or everyone together, already uses the disk this server allows."""
    if LIMITS.visitor_disk_mb:
        used = STORE.usage(key)
        if used > LIMITS.visitor_disk_mb * 2**20:
            raise refusal(f"Your runs and uploads take {_megabytes(used)}; this server keeps at most "
                          f"{LIMITS.visitor_disk_mb:g} MB per visitor. Delete runs you no longer need "
                          "(Fine-tune tab, 'Your runs'), then try again.")
    if LIMITS.total_disk_mb and STORE.usage() > LIMITS.total_disk_mb * 2**20:
        raise refusal("This server's space for runs is full. Try again later: runs are deleted "
                      f"{LIMITS.run_hours:g} hours after their last use." if LIMITS.run_hours else
                      "This server's space for runs is full; ask its owner to make room.")


def fresh_upload_dir(key: str) -> Path:
    """A new folder for photos being checked; the visitor's earlier uploads go, unless a run or a job uses them."""
    return STORE.upload_dir(key, replace=not STOP_FLAGS.running(key))


class StopFlags:
    """One stop flag per visitor for the training or LR sweep they are running; Cancel sets it."""

    def __init__(self):
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, key: str) -> threading.Event:
        with self._lock:
            flag = self._flags[key] = threading.Event()
        return flag

    def stop(self, key: str) -> bool:
        """Set the visitor's flag; False when nothing of theirs is running."""
        with self._lock:
            flag = self._flags.get(key)
        if flag is None:
            return False
        flag.set()
        return True

    def running(self, key: str) -> bool:
        with self._lock:
            return key in self._flags

    def finish(self, key: str, flag: threading.Event) -> None:
        flag.set()
        with self._lock:
            if self._flags.get(key) is flag:
                del self._flags[key]

    def stop_all(self) -> None:
        with self._lock:
            flags = list(self._flags.values())
        for flag in flags:
            flag.set()


STOP_FLAGS = StopFlags()


def newest_run(request: gr.Request = None) -> str:
    """The id of the visitor's newest run, "" when they have none; run pickers refresh when it changes.

    "" differs from the page's initial None, so every page load refreshes them (the Classify tab says what to do).
    """
    runs = STORE.runs(visitor(request))
    return runs[0].run_id if runs else ""


def run_choices(request: gr.Request = None, newest: str | None = None):
    """The visitor's runs for a picker: named for a person, valued by run id, newest first.

    Selected: the newest run that finished normally, else the newest stopped one (cancelled, time limit)
    that has a model; never an unfinished one. `newest` is the refresh's trigger (newest_run's value).
    """
    runs = STORE.runs(visitor(request))
    chosen = (next((r for r in runs if r.finished_normally), None)
              or next((r for r in runs if r.ending != "unfinished"), None))
    return gr.update(choices=[(r.name(), r.run_id) for r in runs], value=chosen and chosen.run_id)


# ---------------------------------------------------------------- whose Hub account a push acts as

TOKENS_PAGE = "https://huggingface.co/settings/tokens"


def is_shared(request: gr.Request | None = None) -> bool:
    """Whether strangers can reach this app: on a Space, through a share link, listening beyond loopback, or
    behind a proxy (TRANSFER_STUDIO_SHARED=1).

    On a shared deployment only a visitor's own credentials act on the Hub; the server's login never
    does. The address is the running server's (its launch's server_name), else GRADIO_SERVER_NAME,
    which `python app.py` launches with.
    """
    if ON_SPACE or os.environ.get(SHARED_ENV, "").strip().lower() in ("1", "true", "yes"):
        return True
    app = getattr(getattr(request, "request", None), "app", None)
    blocks = app.get_blocks() if hasattr(app, "get_blocks") else None
    if getattr(blocks, "share", False):
        return True
    host = getattr(blocks, "server_name", None) or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    return host.strip().strip("[]").lower() not in LOOPBACK


def hub_sign_in() -> bool:
    """Whether the page offers "Sign in with Hugging Face": only where that is the Hub's real login.

    That is a Space with OAuth (hf_oauth: true in README.md). Anywhere else Gradio's LoginButton
    "signs in" every visitor as the account this server is logged in with, so it is not offered.
    """
    from gradio.utils import get_space

    # Gradio's own test for doing the real OAuth rather than its mock.
    return get_space() is not None and bool(os.environ.get("OAUTH_CLIENT_ID"))


def hub_token_label(request: gr.Request | None = None) -> str:
    """The share panel's token box label: which credential a push will use here."""
    if not is_shared(request):
        return "Token with write access (optional: this computer's Hugging Face login or HF_TOKEN is used otherwise)"
    if hub_sign_in():
        return "Your token with write access (optional once you sign in: your sign-in is used otherwise)"
    return "Your Hugging Face token with write access (required: pushes act as you, never as this app's host)"


def hub_token(typed: str | None, oauth_token: gr.OAuthToken | None, request: gr.Request | None) -> str | None:
    """The token a push acts with: the one typed, else the visitor's sign-in; None for this computer's login.

    Only an app on loopback falls back to the computer's login (a person at their own machine). On a
    shared deployment a visitor without credentials of their own is told how to give them, in words
    that name no account.
    """
    token = (typed or "").strip()
    if not token and oauth_token is not None and hub_sign_in():
        token = oauth_token.token
    if token:
        return token
    if not is_shared(request):
        return None
    how = "Sign in with Hugging Face or paste your own token" if hub_sign_in() else "Paste your own Hugging Face token"
    raise refusal(f"{how} with write access ({TOKENS_PAGE}): on this shared app, pushes act as you, "
                  "never as the app's host.")
