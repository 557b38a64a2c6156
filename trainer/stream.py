"""Long torch work as a stream of events: it runs in a thread, the caller iterates over what happens.

For callers that must hand control back between events (a Gradio generator handler, a server
endpoint). The work holds the process's job slot (`models.job_slot`), so a training, an LR sweep
or an export never overlap. The stream yields `None` at least every `heartbeat` seconds, so a
Gradio handler gets a chance to notice that its caller left; closing the stream stops the work
after its current batch.
"""

from __future__ import annotations

import queue
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from models.job_slot import job_slot
from models.run_folder import RunFolder
from trainer.config import TrainConfig
from trainer.lr_finder import LRFinderResult, lr_find
from trainer.train import BatchEvent, EpochStats, FitResult, fit

HEARTBEAT_SECONDS = 1.0
WAITING = "Waiting for another training on this server to finish"


@dataclass
class Log:
    message: str


@dataclass
class Done:
    result: FitResult


@dataclass
class SweepStep:
    step: int  # 0-based
    lr: float
    loss: float  # smoothed


@dataclass
class SweepDone:
    result: LRFinderResult


Event = Log | BatchEvent | EpochStats | Done | SweepStep | SweepDone


def stream(work: Callable[[Callable[[object], None], threading.Event], object], stop: threading.Event,
           name: str, heartbeat: float = HEARTBEAT_SECONDS,
           on_failure: Callable[[], None] = lambda: None) -> Iterator[object | None]:
    """Run `work(emit, stop)` in a thread holding the job slot; yield what it emits, then what it returns.

    What `work` raises (or giving up while waiting for the slot) runs `on_failure` in the thread and
    is raised here, in the caller's thread. `None` is yielded whenever `heartbeat` seconds pass
    without an event. Closing the iterator (or leaving its loop) sets `stop`.
    """
    events: queue.Queue = queue.Queue()
    finished = object()

    def run():
        try:
            with job_slot(stop.is_set, on_wait=lambda: events.put(Log(WAITING))):
                events.put(work(events.put, stop))
            events.put(finished)
        except BaseException as exc:  # handed to the caller's thread, which must not wait forever
            on_failure()
            events.put(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        while True:
            try:
                event = events.get(timeout=heartbeat)
            except queue.Empty:
                yield None
                continue
            if event is finished:
                return
            if isinstance(event, BaseException):
                raise event
            yield event
    finally:
        stop.set()


def fit_events(data, config: TrainConfig, run_dir: Path, stop: threading.Event | None = None,
               heartbeat: float = HEARTBEAT_SECONDS) -> Iterator[Event | None]:
    """fit() as a stream: Log, BatchEvent and EpochStats as they happen, then Done.

    When fit fails or never starts, the unfinished run folder is removed.
    """
    def work(emit, stop):
        return Done(fit(data, config, run_dir, overwrite=True, on_batch=emit, on_epoch=emit,
                        should_stop=stop.is_set, log=lambda message: emit(Log(message))))

    def remove_unfinished():
        if not RunFolder(run_dir).is_finished():
            shutil.rmtree(run_dir, ignore_errors=True)

    return stream(work, stop or threading.Event(), f"fit-{Path(run_dir).name}", heartbeat, remove_unfinished)


def sweep_events(data, config: TrainConfig, workdir: Path, stop: threading.Event | None = None,
                 heartbeat: float = HEARTBEAT_SECONDS) -> Iterator[Event | None]:
    """The LR finder as a stream: SweepStep per step, then SweepDone."""
    def work(emit, stop):
        return SweepDone(lr_find(data, config, workdir=workdir, should_stop=stop.is_set,
                                 on_step=lambda step, lr, loss: emit(SweepStep(step, lr, loss))))

    return stream(work, stop or threading.Event(), "lr-sweep", heartbeat)
