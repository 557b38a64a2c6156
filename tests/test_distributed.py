"""torchrun on CPU: two gloo processes on loopback train what one process trains, and fail cleanly together."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from conftest import run_main, write_photos
from trainer.__main__ import main
from trainer.config import ScheduleConfig, TrainConfig
from trainer.distributed import World
from trainer.task import is_padding
from trainer.train import fit

REPO = Path(__file__).resolve().parent.parent
# Subprocesses do not see the tests' float32 fixture: they are told.
TINY = ["--precision", "fp32", "--weights", "none", "--augment", "none", "--image-size", "32", "--epochs", "2",
        "--lr", "0.01"]


def torchrun(*args: str, processes: int = 2) -> subprocess.Popen:
    """`torchrun --standalone` (a free port per job, nothing left listening) running the trainer CLI."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "trainer", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(job: subprocess.Popen, timeout: float = 240) -> str:
    out, err = job.communicate(timeout=timeout)
    assert job.returncode == 0, err[-3000:]
    return out


def one_process(photos: Path, out: Path, **settings) -> Path:
    schedule = ScheduleConfig(lr=0.01, epochs=2)
    config = TrainConfig(weights="none", augment="none", image_size=32, schedule=schedule, device="cpu",
                         precision="fp32", **settings)
    return fit(photos, config, out).run_dir


def predictions(run: Path) -> dict:
    return json.loads((run / "predictions.json").read_text())


def test_two_processes_train_the_linear_probe_one_process_trains_counting_each_photo_once(tmp_path):
    # 11 photos per class, a quarter held out: 24 training photos (3 steps of 4 + 4) and 9 validation photos,
    # so one process evaluates 5 and the other 4.
    photos = write_photos(tmp_path / "photos", per_class=11)
    started = time.perf_counter()
    job = torchrun("fit", str(photos), "--out", str(tmp_path / "two"), "--strategy", "linear-probe",
                   "--batch-size", "4", "--val-fraction", "0.25", *TINY)
    out = finished(job)
    two_seconds = time.perf_counter() - started
    started = time.perf_counter()
    single = one_process(photos, tmp_path / "one", strategy="linear-probe", batch_size=8, val_fraction=0.25)
    print(f"linear probe, 2 processes: {two_seconds:.1f} s (with start-up); 1 process: "
          f"{time.perf_counter() - started:.1f} s")
    two = tmp_path / "two"
    assert "best epoch" in out and f"run folder: {two}" in out
    metrics = {run: json.loads((run / "metrics.json").read_text()) for run in (single, two)}
    assert metrics[two]["val"]["count"] == metrics[single]["val"]["count"] == 9
    assert json.loads((two / "config.json").read_text())["trained_on"] == {
        "processes": 2, "backend": "gloo", "device": "cpu", "precision": "float32"}
    assert json.loads((single / "config.json").read_text())["trained_on"] == {
        "processes": 1, "device": "cpu", "precision": "float32"}
    ours, theirs = predictions(two)["val"], predictions(single)["val"]
    assert [row[:3] for row in ours] == [row[:3] for row in theirs]  # same photos, same truths, same predictions
    np.testing.assert_allclose([row[3] for row in ours], [row[3] for row in theirs], atol=1e-5)
    history = [json.loads((run / "history.json").read_text()) for run in (two, single)]
    assert [epoch["train_acc"] for epoch in history[0]] == [epoch["train_acc"] for epoch in history[1]]


def test_a_full_fine_tune_on_two_processes_matches_one_process_with_the_same_global_batch(tmp_path):
    # 24 training photos: 3 steps of 8 per epoch, split 4 + 4; BatchNorm frozen so per-process batches agree.
    photos = write_photos(tmp_path / "photos", per_class=10)
    job = torchrun("fit", str(photos), "--out", str(tmp_path / "two"), "--strategy", "full", "--freeze-bn",
                   "--batch-size", "4", "--optimizer", "sgd", *TINY)
    finished(job)
    single = one_process(photos, tmp_path / "one", strategy="full", freeze_bn=True, batch_size=8)
    ours, theirs = load_file(tmp_path / "two" / "model.safetensors"), load_file(single / "model.safetensors")
    assert ours.keys() == theirs.keys()
    worst = max(float(np.abs(ours[k] - theirs[k]).max()) for k in ours)
    print(f"largest weight difference, 2 processes vs 1: {worst:.2e}")
    assert worst < 1e-4
    assert [r[:3] for r in predictions(tmp_path / "two")["val"]] == [r[:3] for r in predictions(single)["val"]]


def _rank_pid(job: subprocess.Popen, rank: int) -> int | None:
    for task in Path(f"/proc/{job.pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return int(child)
    return None


def test_a_killed_rank_ends_the_job_with_a_message_and_no_run_folder(tmp_path):
    photos = write_photos(tmp_path / "photos", per_class=10)
    out = tmp_path / "run"
    job = torchrun("fit", str(photos), "--out", str(out), "--strategy", "full", "--batch-size", "4",
                   *TINY[:-4], "--epochs", "1000", "--lr", "0.001")
    deadline = time.monotonic() + 120
    while not (tmp_path / ".run.unfinished" / "config.json").is_file():  # training has begun
        assert job.poll() is None and time.monotonic() < deadline, job.stderr.read()[-3000:]
        time.sleep(0.2)
    time.sleep(1)
    os.kill(_rank_pid(job, 1), signal.SIGKILL)
    _, err = job.communicate(timeout=120)
    assert job.returncode != 0
    assert "Root Cause" in err and "rank      : 1" in err and "Signal 9 (SIGKILL)" in err  # torchrun's summary
    assert ("stopped: torchrun ends every process of a training when one fails or on Ctrl-C; "
            f"nothing was written to {out}") in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # neither the run nor its unfinished folder


def test_sync_bn_is_refused_on_cpu_with_what_to_do_instead(tmp_path):
    photos = write_photos(tmp_path / "photos", per_class=3)
    refused = run_main(main, "fit", str(photos), "--out", str(tmp_path / "run"), "--sync-bn", "--device", "cpu", *TINY)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "error: --sync-bn synchronises BatchNorm between GPUs; DistributedDataParallel supports SyncBatchNorm on "
        "CUDA only. Leave it off on CPU (or freeze BatchNorm with --freeze-bn)")
    assert not (tmp_path / "run").exists()


def test_shards_take_every_nth_item_and_gather_back_in_order():
    items = list(range(7))
    shards = [World(rank, 3).shard(items) for rank in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert World().gather_shards(items) == items


def test_the_samplers_repeated_photos_are_marked_as_padding():
    from torch.utils.data import DataLoader, DistributedSampler

    data = list(range(5))  # 2 processes: 3 positions each, the sixth repeats the first photo
    loaders = [DataLoader(data, batch_size=2, sampler=DistributedSampler(data, 2, rank, shuffle=False))
               for rank in range(2)]
    assert [is_padding(loaders[rank], World(rank, 2), 1, 1).tolist() for rank in range(2)] == [[False], [True]]
    assert is_padding(loaders[0], World(0, 2), 0, 2).tolist() == [False, False]
