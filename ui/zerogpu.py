"""ZeroGPU Spaces: trainings and LR sweeps run inside `spaces.GPU`; elsewhere the same streams run here.

`spaces.GPU` runs the function in a forked process holding a GPU for at most `duration` seconds; it
pickles the arguments and everything yielded, so thread events and callbacks cannot cross. There,
fit and the sweep run as generators of plain values (the photos' path, the config, a folder) that
yield their events. Cancel raises a stop file the GPU process checks every batch (a cancelled
training still ends with its best model, as it does here); when the page leaves, the generator here
is closed, spaces closes the one in the GPU process, and that stops the work too. Only torch work goes
there: classify serves with onnxruntime on the CPU (ZeroGPU holds no GPU outside these calls).
Off ZeroGPU (`SPACES_ZERO_GPU` unset) `spaces.GPU` returns the function unchanged.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import spaces

from trainer import stream
from trainer.config import TrainConfig
from trainer.experiment import arm_seconds

ON_ZEROGPU = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")

# Seconds per photo of a training step (forward and backward, AMP) at 224 px on a ZeroGPU card, with a
# margin: what `duration` is built from, since the main process of a ZeroGPU Space has no GPU to time.
GPU_STEP_SECONDS = {"resnet18": 1 / 1500, "resnet34": 1 / 900, "resnet50": 1 / 450}
# Starting the GPU process, moving the model, decoding the photos; exporting and checking the ONNX model.
GPU_OVERHEAD_SECONDS = 45
SWEEP_SECONDS = 60
# A training whose photos are not counted yet (the /train API's zip) and that has no time limit.
UNCOUNTED_SECONDS = 600


def training_seconds(config: TrainConfig, photos: tuple[int, int] | None) -> int:
    """The GPU time a training asks for: its estimate from the photo counts (train, val), within its time limit."""
    backward = GPU_STEP_SECONDS[config.arch] * (config.image_size / 224) ** 2
    if photos:
        seconds = GPU_OVERHEAD_SECONDS + 1.5 * arm_seconds(config, *photos, backward / 3, backward)
    else:
        seconds = UNCOUNTED_SECONDS
    if config.max_minutes:
        seconds = min(seconds, config.max_minutes * 60 + GPU_OVERHEAD_SECONDS)
    return int(seconds)


class StopFile(threading.Event):
    """A stop flag that another process raises by creating its file."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def is_set(self) -> bool:
        return super().is_set() or self.path.exists()


# spaces calls `duration` with the GPU function's own arguments.
@spaces.GPU(duration=lambda data, config, run_dir, photos, stop_file: training_seconds(config, photos))
def _fit_on_gpu(data: str, config: TrainConfig, run_dir: Path, photos: tuple[int, int] | None, stop_file: Path):
    yield from stream.fit_events(data, config, run_dir, StopFile(stop_file))


@spaces.GPU(duration=SWEEP_SECONDS)
def _sweep_on_gpu(data: str, config: TrainConfig, workdir: Path, stop_file: Path):
    yield from stream.sweep_events(data, config, workdir, StopFile(stop_file))


def fit_events(data: str, config: TrainConfig, run_dir: Path, stop: threading.Event,
               photos: tuple[int, int] | None = None) -> Iterator[stream.Event | None]:
    """trainer.stream.fit_events, in the GPU process on ZeroGPU; `photos` (train, val), when counted, sizes its GPU time."""
    if not ON_ZEROGPU:
        return stream.fit_events(data, config, run_dir, stop)
    return _relayed(stop, lambda stop_file: _fit_on_gpu(data, config, run_dir, photos, stop_file))


def sweep_events(data: str, config: TrainConfig, workdir: Path, stop: threading.Event) -> Iterator[stream.Event | None]:
    """trainer.stream.sweep_events, in the GPU process on ZeroGPU."""
    if not ON_ZEROGPU:
        return stream.sweep_events(data, config, workdir, stop)
    return _relayed(stop, lambda stop_file: _sweep_on_gpu(data, config, workdir, stop_file))


def _relayed(stop: threading.Event, start) -> Iterator:
    """The GPU process's events; `stop` (Cancel) reaches it as its stop file, leaving (close) as spaces' close."""
    stop_file = Path(tempfile.gettempdir()) / f"transfer-studio-stop-{secrets.token_hex(8)}"
    events = start(stop_file)
    try:
        for event in events:  # the stream's heartbeats bring control back here at least every second
            if stop.is_set():
                stop_file.touch()
            yield event
    finally:
        events.close()
        stop_file.unlink(missing_ok=True)
