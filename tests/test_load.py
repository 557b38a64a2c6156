"""Load and concurrency through the real API: the app launched on a loopback port, called with gradio_client.

A small version of bench/bench_load.py (whose measuring functions it uses, so the benchmark stays
working): two sessions start /train at the same moment, and training's single slot must make the
second wait, give each its own run, and keep each session's runs out of the other's listing; then 4
sessions x 5 photos hit /classify at once, and every answer must arrive and equal the local
OnnxClassifier's.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import gradio as gr
import pytest

import trainer.stream
from conftest import write_photos, zip_folder
from models.runtime import resolve_model
from ui import finetune, session

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_load  # noqa: E402


@pytest.fixture(scope="module")
def server():
    """The app on a free loopback port, as `python app.py` queues it: (app module, url)."""
    app, url = bench_load.launch_app()
    try:
        yield app, url
    finally:
        app.demo.close()


@pytest.fixture(scope="module")
def trainings(server, tmp_path_factory):
    """Two tiny trainings submitted together from two sessions (seeds 1 and 2), watched until both end."""
    app, url = server
    folder = tmp_path_factory.mktemp("load")
    # Two classes of 6 small photos: the smallest upload that still trains, exports and validates.
    archive = zip_folder(write_photos(folder / "photos", per_class=6, classes=("red", "blue")), folder / "photos.zip")
    return bench_load.two_trainings(url, archive, (bench_load.tiny_config(seed=1), bench_load.tiny_config(seed=2)))


def test_two_trainings_at_once_both_finish_the_second_after_waiting_in_the_queue(trainings):
    first, second = trainings.ordered()
    assert first.error is None and second.error is None, (first.error, second.error)
    # Training has one slot: the later job was seen queued while the earlier one was running ...
    assert trainings.waited, [t.changes for t in trainings.jobs]
    assert second.ranks and min(second.ranks) >= 0
    # ... and only started once the earlier one had finished.
    assert trainings.started_after, (first.finished, second.started)
    assert first.started is not None and first.finished < second.finished


def test_two_trainings_get_their_own_runs_configs_and_session_listings(server, trainings):
    app, _ = server
    ids = [t.result["run_id"] for t in trainings.jobs]
    assert len(set(ids)) == 2
    for trace, run_id in zip(trainings.jobs, ids):
        folder = session.STORE.find(run_id)
        assert folder.parent.name == trace.session  # the run lives under the session that asked for it
        assert json.loads((folder / "config.json").read_text())["train"]["seed"] == trace.config["seed"]
        assert (folder / "model.onnx").is_file()
        # Each session sees its own run and not the other's.
        assert [r.run_id for r in session.STORE.runs(trace.session)] == [run_id]
    assert bench_load.check_runs(trainings, session.STORE) == []


def test_concurrent_classify_calls_are_all_answered_and_all_correct(server, trainings):
    app, url = server
    run_id = trainings.jobs[0].result["run_id"]
    photos = bench_load.photos()[::4]  # 11 of the shipped photos, examples and sample alike
    expected = bench_load.expected_predictions(resolve_model(session.STORE.find(run_id)), photos)  # the run's default
    load = bench_load.classify_load(url, run_id, expected, clients=4, per_client=5)
    print(f"\n{load.summary()}")
    assert load.errors == [] and load.wrong == []
    assert load.answered == load.calls == 20 and len(load.latencies) == 20
    assert load.throughput > 0 and all(ms > 0 for ms in load.server_ms)


def test_a_training_that_fails_unexpectedly_answers_with_an_error_instead_of_waiting_forever(
    server, monkeypatch, tmp_path
):
    from types import SimpleNamespace

    app, _ = server

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    # A fault injected into training itself; the code under test is the handler that runs it.
    monkeypatch.setattr(trainer.stream, "fit", disk_full)
    archive = zip_folder(write_photos(tmp_path / "photos", per_class=2, classes=("red", "blue")), tmp_path / "p.zip")
    outcome = {}

    def call():
        request = SimpleNamespace(session_hash="fails", client=SimpleNamespace(host="127.0.0.1"))
        try:
            outcome["result"] = list(finetune.train_api(str(archive), bench_load.tiny_config(seed=0), request=request))
        except Exception as exc:  # noqa: BLE001 -- what it raised is the point
            outcome["error"] = exc

    # Called directly, not through the server, so that a hang cannot hold the server's training slot.
    thread = threading.Thread(target=call, name="train-api-call", daemon=True)
    thread.start()
    thread.join(timeout=10)  # the injected failure is immediate; an answer needs well under a second
    assert not thread.is_alive(), "train_api is still waiting for a training thread that has died"
    assert isinstance(outcome.get("error"), gr.Error), outcome
    assert "could not be written" in outcome["error"].message
    runs = [p for p in session.STORE.visitor_dir("fails").iterdir() if p.name != "uploads"]
    assert runs == []  # the unfinished run folder is removed, not listed as a run
