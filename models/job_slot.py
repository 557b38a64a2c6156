"""The process's one slot for torch work: a training, an LR sweep or an ONNX export, never two at once.

torch.onnx.export traces through process-global state (torch.fx's traceback hooks), so an export
beside a training crashed one of them (`KeyError: 'custom'`), and two trainings on a 2-core Space
only slow each other down. Whoever does torch work on a shared server holds this slot.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

_SLOT = threading.Lock()
POLL_SECONDS = 0.5


class SlotAbandoned(Exception):
    """The caller gave up (its stop flag was set) while waiting for the slot."""


@contextmanager
def job_slot(should_stop: Callable[[], bool] = lambda: False,
             on_wait: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Hold the slot for the `with` body; `on_wait` is called once if another job holds it first."""
    if not _SLOT.acquire(blocking=False):
        on_wait()
        while not _SLOT.acquire(timeout=POLL_SECONDS):
            if should_stop():
                raise SlotAbandoned("stopped while waiting for another job to finish")
    try:
        yield
    finally:
        _SLOT.release()
