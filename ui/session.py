"""Who a visitor is, and what the app keeps per visitor: runs, uploads, the stop flag of their training.

Everything kept per visitor is keyed by `visitor(request)`, never by Gradio's `session_hash`
directly, so the key can become one that survives a page reload without touching the tabs.
"""

from __future__ import annotations

import os
import re
import threading

import gradio as gr

from models.run_store import RunStore
from models.serving import ModelServer

ON_SPACE = bool(os.environ.get("SPACE_ID"))
# Runs expire after TRANSFER_STUDIO_RUN_HOURS (on a shared Space, a day unless set; locally, never unless set).
STORE = RunStore(max_age_hours=float(os.environ.get("TRANSFER_STUDIO_RUN_HOURS") or (24 if ON_SPACE else 0)) or None)
MODELS = ModelServer(STORE)
LOCAL_VISITOR = "local"  # calls without a browser session: a person at this machine, or the tests
_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def visitor(request: gr.Request | None) -> str:
    """The key of the visitor making this request: their runs, uploads and stop flag live under it."""
    key = getattr(request, "session_hash", None) or LOCAL_VISITOR
    if not _KEY.match(key):
        raise gr.Error("This browser session is not valid; reload the page")
    return key


def is_local(request: gr.Request | None) -> bool:
    """Whether the visitor is at this machine: typed server paths are for them, never a Space or a share link."""
    host = (getattr(request, "client", None) and request.client.host) or "127.0.0.1"
    return not ON_SPACE and host in ("127.0.0.1", "::1", "localhost")


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


def run_choices(request: gr.Request = None, newest: str | None = None):
    """The visitor's runs for a picker, newest first (or `newest` selected)."""
    runs = STORE.runs(visitor(request))
    choices = [(f"{r.run_id}: {r.summary}", r.run_id) for r in runs]
    return gr.update(choices=choices, value=newest or (choices[0][1] if choices else None))
