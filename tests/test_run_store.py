"""RunStore: run folders per visitor, lookup by id, expiry, and the downloadable zip."""

import json
import os
import time
import zipfile

import pytest

from models.run_store import RunStore


def finished_run(store: RunStore, session: str) -> str:
    run_id, path = store.new_run(session)
    config = {"labels": ["a", "b"], "preprocessing": {"resize": 256, "crop": 224, "mean": [0.5] * 3, "std": [0.2] * 3},
              "train": {"arch": "resnet18", "strategy": "full"}}
    (path / "config.json").write_text(json.dumps(config))
    (path / "metrics.json").write_text(json.dumps({"val": {"accuracy": 0.75}}))
    return run_id


def test_each_session_lists_only_its_own_runs_newest_first(tmp_path):
    store = RunStore(tmp_path)
    first, second = finished_run(store, "alice"), finished_run(store, "alice")
    os.utime(store.find(first), (time.time() - 60, time.time() - 60))
    finished_run(store, "bob")
    assert [r.run_id for r in store.runs("alice")] == [second, first]
    assert store.runs("alice")[0].summary == "resnet18 full, 2 classes, val acc 75.0%"
    assert len(store.runs("bob")) == 1 and store.runs("carol") == []


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
