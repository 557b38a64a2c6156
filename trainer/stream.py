"""fit() as a stream of events: training runs in a thread, the caller iterates over what happens.

For callers that must hand control back between events (a Gradio generator handler, a server
endpoint). Closing the stream early stops the training after its current batch.
"""

from __future__ import annotations

import queue
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from models.run_folder import RunFolder
from trainer.config import TrainConfig
from trainer.train import BatchEvent, EpochStats, FitResult, fit


@dataclass
class Log:
    message: str


@dataclass
class Done:
    result: FitResult


Event = Log | BatchEvent | EpochStats | Done


def fit_events(data, config: TrainConfig, run_dir: Path, stop: threading.Event | None = None) -> Iterator[Event]:
    """Run fit in a thread; yield Log, BatchEvent and EpochStats as they happen, then Done.

    What fit raises is raised here, in the caller's thread, and the unfinished run folder is removed.
    Closing the iterator (or leaving its loop) sets `stop`, so a training nobody follows ends.
    """
    stop = stop or threading.Event()
    events: queue.Queue = queue.Queue()

    def work():
        try:
            result = fit(data, config, run_dir, overwrite=True, on_batch=events.put, on_epoch=events.put,
                         should_stop=stop.is_set, log=lambda message: events.put(Log(message)))
            events.put(Done(result))
        except BaseException as exc:  # handed to the caller's thread, which must not wait forever
            if not RunFolder(run_dir).is_finished():
                shutil.rmtree(run_dir, ignore_errors=True)
            events.put(exc)

    thread = threading.Thread(target=work, name=f"fit-{Path(run_dir).name}", daemon=True)
    thread.start()
    try:
        while True:
            event = events.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, Done):
                return
    finally:
        stop.set()
