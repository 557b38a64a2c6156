"""Shared fixtures: small real photo folders written to disk, and a tiny-training config."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import stat
import subprocess
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from PIL import Image

from trainer.config import ScheduleConfig, TrainConfig

ASSETS = Path(__file__).resolve().parent.parent / "assets"
COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}

# Two cores: let torch use both, and never more (tests also start app servers and subprocesses).
os.environ.setdefault("OMP_NUM_THREADS", "2")
# Locally, every run draws new fuzz cases (that is how they find bugs); CI draws the same ones each
# time, so a landing never depends on luck. A case found locally becomes a fixed test.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
# The app keeps its runs under this folder; tests never write into the working tree.
os.environ["TRANSFER_STUDIO_DATA_DIR"] = tempfile.mkdtemp(prefix="transfer-studio-test-")
# ... and Gradio its uploads and answered files under this one: both go when the session ends (a full
# suite leaves gigabytes of runs and copies, which would fill the disk of whoever runs it often).
os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="transfer-studio-gradio-")


def write_photos(root: Path, per_class: int = 12, classes=("red", "green", "blue"), size=(40, 36), seed=0) -> Path:
    """Class folders of noisy, distinctly coloured JPEGs: easy to learn, still real files."""
    rng = np.random.default_rng(seed)
    for name in classes:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.array(COLOURS[name], dtype=np.float64)
            pixels = base + rng.normal(0, 25, size=(size[1], size[0], 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{name}_{i:02d}.jpg", quality=90)
    return root


def symlink_entry(name: str) -> zipfile.ZipInfo:
    """A zip entry that unpacks as a symbolic link (its target is the entry's data)."""
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def zip_folder(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return archive


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served_app(concurrency: int | None = None):
    """The app (app.demo) launched on a free loopback port, as a visitor reaches it; yields its URL."""
    import app

    app.demo.queue(**({"default_concurrency_limit": concurrency} if concurrency else {}))
    _, url, _ = app.demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield url
    finally:
        app.demo.close()


def tiny_config(**overrides) -> TrainConfig:
    """ResNet-18, random init, 32 px crops: trains in seconds on two cores."""
    schedule = overrides.pop("schedule", ScheduleConfig(lr=overrides.pop("lr", 1e-3), epochs=overrides.pop("epochs", 3)))
    base = dict(weights="none", strategy="full", optimizer="adamw", image_size=32, batch_size=8, augment="none", seed=0)
    base.update(overrides)
    return TrainConfig(schedule=schedule, **base)


@pytest.fixture(autouse=True, scope="session")
def float32_on_every_cpu():
    """Precision "auto" means bfloat16 on CPUs with native bf16 (AMX, AVX512-BF16): the tests' figures would
    depend on which machine runs them, so they see a CPU without it (tests of bf16 ask for it by name)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("trainer.step.cpu_has_native_bf16", lambda: False)
        yield


@pytest.fixture
def photos(tmp_path) -> Path:
    return write_photos(tmp_path / "photos")


def pytest_sessionfinish(session, exitstatus):
    """Let trainings still running in app threads stop before the interpreter exits under them, then remove
    the folders the app and Gradio wrote into."""
    import shutil
    import sys
    import threading

    session = sys.modules.get("ui.session")
    if session is not None:
        session.STOP_FLAGS.stop_all()
    for thread in threading.enumerate():
        if thread.name.startswith(("fit-", "experiment-", "lr-sweep")):
            thread.join(timeout=120)
    for name in ("TRANSFER_STUDIO_DATA_DIR", "GRADIO_TEMP_DIR"):
        shutil.rmtree(os.environ[name], ignore_errors=True)


def run_main(main, *args: str) -> subprocess.CompletedProcess:
    """A CLI's main() run in this process, its exit code and printed text as a finished subprocess would give them.

    As fast as a function call (a fresh interpreter pays seconds for importing torch); the tests that
    start `python -m trainer` for real keep doing so.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse refusing the command line
            code = exc.code
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())
