"""ZeroGPU's contract, checked on CPU: the GPU functions take and yield only picklable values, Cancel reaches
them through their stop file, leaving closes them, and the GPU time asked for follows the run's size.

Off a ZeroGPU Space `spaces.GPU` returns the function itself, so the generators below run here as they
would in the forked GPU process (ui.zerogpu.ON_ZEROGPU is switched on to take that path).
"""

import pickle
import threading
import time

import pytest

from conftest import tiny_config, write_photos
from trainer.stream import Done, EpochStats
from ui import zerogpu


@pytest.fixture
def on_zerogpu(monkeypatch):
    monkeypatch.setattr(zerogpu, "ON_ZEROGPU", True)


def test_training_on_zerogpu_passes_and_yields_only_picklable_values_and_cancel_keeps_the_best_model(
        tmp_path, on_zerogpu, monkeypatch):
    photos = write_photos(tmp_path / "photos", per_class=6)
    config = tiny_config(epochs=200)
    sent = []
    real = zerogpu._fit_on_gpu
    monkeypatch.setattr(zerogpu, "_fit_on_gpu", lambda *args: sent.append(pickle.dumps(args)) or real(*args))
    stop = threading.Event()
    events = []
    for event in zerogpu.fit_events(str(photos), config, tmp_path / "run", stop, photos=(12, 6)):
        pickle.dumps(event)  # what spaces sends back from the GPU process
        events.append(event)
        if isinstance(event, EpochStats):
            stop.set()  # Cancel
    assert sent, "the training did not go through the GPU function"
    done = events[-1]
    assert isinstance(done, Done) and done.result.stopped == "cancelled"
    assert 1 <= len(done.result.history) < 200
    assert (tmp_path / "run" / "model.safetensors").is_file()  # the best model so far, as off ZeroGPU
    assert not list(tmp_path.glob("transfer-studio-stop-*"))


def test_leaving_closes_the_training_in_the_gpu_process(tmp_path, on_zerogpu):
    photos = write_photos(tmp_path / "photos", per_class=6)
    events = zerogpu.fit_events(str(photos), tiny_config(epochs=500), tmp_path / "run", threading.Event(), photos=(12, 6))
    for event in events:
        if isinstance(event, EpochStats):
            break
    events.close()  # what Gradio does when the page goes away
    deadline = time.monotonic() + 60
    while any(t.name == "fit-run" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the training went on after its caller left"
        time.sleep(0.1)


def test_the_lr_sweep_on_zerogpu_yields_picklable_steps(tmp_path, on_zerogpu):
    photos = write_photos(tmp_path / "photos", per_class=6)
    config = tiny_config(strategy="linear-probe")  # a sweep over cached features: seconds
    events = list(zerogpu.sweep_events(str(photos), config, tmp_path, threading.Event()))
    assert all(pickle.loads(pickle.dumps(event)) is not None for event in events if event is not None)
    assert type(events[-1]).__name__ == "SweepDone"


def test_the_gpu_time_asked_for_grows_with_photos_epochs_and_backbone_within_the_time_limit():
    base = tiny_config(arch="resnet18", image_size=224, epochs=10, strategy="full")
    small = zerogpu.training_seconds(base, (400, 100))
    assert zerogpu.GPU_OVERHEAD_SECONDS < small < 120
    assert zerogpu.training_seconds(base, (4000, 1000)) > small
    assert zerogpu.training_seconds(tiny_config(arch="resnet50", image_size=224, epochs=10), (400, 100)) > small
    limited = tiny_config(arch="resnet50", image_size=224, epochs=100, max_minutes=2)
    assert zerogpu.training_seconds(limited, (40000, 1000)) == 2 * 60 + zerogpu.GPU_OVERHEAD_SECONDS
    assert zerogpu.training_seconds(base, None) == zerogpu.UNCOUNTED_SECONDS  # the API's zip, not counted
    assert zerogpu.training_seconds(limited, None) == 2 * 60 + zerogpu.GPU_OVERHEAD_SECONDS
