"""RunStore: run folders per visitor, lookup by id, expiry, and the downloadable zip."""

import json
import os
import time
import zipfile

import pytest

from models.run_store import RunStore


def finished_run(store: RunStore, session: str, stopped: str | None = None, accuracy: float = 0.75,
                 report: dict | None = None, strategy: str = "full") -> str:
    run_id, path = store.new_run(session)
    config = {"labels": ["a", "b"], "preprocessing": {"resize": 256, "crop": 224, "mean": [0.5] * 3, "std": [0.2] * 3},
              "train": {"arch": "resnet18", "strategy": strategy}}
    (path / "config.json").write_text(json.dumps(config))
    (path / "metrics.json").write_text(json.dumps({"stopped": stopped, "val": {"accuracy": accuracy}}))
    if report is not None:
        (path / "data_report.json").write_text(json.dumps(report))
    return run_id


def started_at(store: RunStore, run_id: str, hhmmss: str) -> str:
    """The run renamed as if its training had started today at hhmmss (a run id holds its start)."""
    path = store.find(run_id)
    new_id = time.strftime("%Y%m%d-") + hhmmss + run_id[15:]
    path.rename(path.with_name(new_id))
    return new_id


def test_each_session_lists_only_its_own_runs_newest_first(tmp_path):
    store = RunStore(tmp_path)
    first, second = finished_run(store, "alice"), finished_run(store, "alice")
    first, second = started_at(store, first, "074459"), started_at(store, second, "104400")
    finished_run(store, "bob")
    assert [r.run_id for r in store.runs("alice")] == [second, first]
    assert store.runs("alice")[0].name() == "a, b · resnet18 full · val 75% · 10:44"
    assert len(store.runs("bob")) == 1 and store.runs("carol") == []


@pytest.mark.parametrize(
    "stopped, tag, normal",
    [(None, "", True), ("early-stopping", " (stopped early)", True), ("time limit", " (time limit)", False),
     ("cancelled", " (cancelled)", False)],
)
def test_a_run_is_named_by_its_photos_backbone_strategy_accuracy_time_and_how_it_ended(tmp_path, stopped, tag, normal):
    store = RunStore(tmp_path)
    run_id = finished_run(store, "alice", stopped, accuracy=0.8667, strategy="finetune",
                          report={"source": "food4.zip", "root": str(tmp_path / "uploads" / "1f2e" / "data")})
    run_id = started_at(store, run_id, "104400")
    (run,) = store.runs("alice")
    assert run.name() == f"food4 · resnet18 finetune · val 87% · 10:44{tag}"
    assert run.finished_normally is normal and run.run_id == run_id


@pytest.mark.parametrize(
    "report, data",
    [({"source": "photos", "root": "/home/me/photos/food4"}, "photos"),  # the folder given, not the one inside it
     ({"root": "/home/me/photos/food4"}, "food4"),  # reports written before they named their source
     ({"source": "data", "root": "/srv/runs/v-1/uploads/1f2e/data"}, "a, b"),  # a zip already extracted by the app
     ({"source": "classes", "root": "/srv/runs/v-1/uploads/1f2e/classes"}, "a, b"),  # the per-class upload
     ({}, "a, b")],
)
def test_the_photos_are_named_as_the_person_named_them_else_by_their_classes(tmp_path, report, data):
    store = RunStore(tmp_path)
    finished_run(store, "alice", report=report)
    assert store.runs("alice")[0].summary == f"{data} · resnet18 full · val 75%"


def test_a_zip_checked_before_training_is_named_by_the_report_of_its_upload(tmp_path):
    store = RunStore(tmp_path)
    upload = store.upload_dir("alice")
    (upload / "data_report.json").write_text(json.dumps({"source": "food4.zip", "root": str(upload / "data")}))
    finished_run(store, "alice", report={"source": "data", "root": str(upload / "data")})  # trained from data/
    assert store.runs("alice")[0].summary == "food4 · resnet18 full · val 75%"
    (upload / "data_report.json").write_text("{cut")  # a damaged upload report costs the name, not the run
    assert store.runs("alice")[0].summary == "a, b · resnet18 full · val 75%"


def test_a_run_still_training_or_interrupted_is_named_unfinished(tmp_path):
    store = RunStore(tmp_path)
    run_id = started_at(store, finished_run(store, "alice"), "104400")
    (store.find(run_id) / "metrics.json").unlink()
    (run,) = store.runs("alice")
    assert run.name() == "a, b · resnet18 full · 10:44 (unfinished)" and not run.finished_normally


def test_run_ids_find_runs_and_refuse_path_tricks(tmp_path):
    store = RunStore(tmp_path)
    run_id = finished_run(store, "alice")
    assert store.find(run_id).parent.name == "alice"
    for bad in ("../alice", "*", "", "a/b"):
        with pytest.raises(ValueError):
            store.find(bad)
    with pytest.raises(ValueError, match="invalid visitor"):
        store.new_run("../../etc")


def test_sessions_untouched_for_longer_than_the_limit_expire(tmp_path):
    store = RunStore(tmp_path, max_age_hours=1)
    old, new = finished_run(store, "old"), finished_run(store, "new")
    past = time.time() - 2 * 3600
    for path in (tmp_path / "old").rglob("*"):
        os.utime(path, (past, past))
    os.utime(tmp_path / "old", (past, past))
    assert store.expire() == [tmp_path / "old"]
    assert store.find(new) and not (tmp_path / "old").exists()
    with pytest.raises(ValueError):
        store.find(old)
    assert RunStore(tmp_path).expire() == []  # no limit: nothing expires


def test_the_download_zip_holds_the_run_but_not_the_extracted_photos(tmp_path):
    store = RunStore(tmp_path)
    run_id = finished_run(store, "alice")
    run = store.find(run_id)
    (run / "data" / "cats").mkdir(parents=True)
    (run / "data" / "cats" / "1.jpg").write_bytes(b"jpeg")
    names = zipfile.ZipFile(store.zip_run(run)).namelist()
    assert sorted(names) == [f"{run_id}/config.json", f"{run_id}/metrics.json"]


def test_a_new_upload_replaces_earlier_ones_except_those_a_run_was_trained_from(tmp_path):
    store = RunStore(tmp_path)
    used = store.upload_dir("alice")
    (used / "data").mkdir()
    run_id = finished_run(store, "alice")
    (store.find(run_id) / "data_report.json").write_text(json.dumps({"root": str(used / "data")}))
    unused = store.upload_dir("alice")
    (unused / "photo.jpg").write_bytes(b"x" * 100)
    latest = store.upload_dir("alice")
    assert sorted(p.name for p in latest.parent.iterdir()) == sorted([used.name, latest.name])
    kept = store.upload_dir("alice", replace=False)  # while a job of theirs may still read one
    assert {used.name, latest.name, kept.name} <= {p.name for p in kept.parent.iterdir()}


def test_usage_counts_a_visitor_or_the_whole_store_and_delete_frees_it(tmp_path):
    store = RunStore(tmp_path)
    run_id = finished_run(store, "alice")
    (store.find(run_id) / "model.onnx").write_bytes(b"x" * 10_000)
    finished_run(store, "bob")
    assert 10_000 < store.usage("alice") < store.usage()
    with pytest.raises(ValueError, match="not one of yours"):
        store.delete_run("bob", run_id)
    store.delete_run("alice", run_id)
    assert store.usage("alice") == 0 and store.runs("alice") == []
    for bad in ("uploads", "../bob", ""):
        with pytest.raises(ValueError):
            store.delete_run("alice", bad)
