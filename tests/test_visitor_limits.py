"""A visitor's work is bounded, driven over HTTP on loopback as a visitor would (gradio_client, or the raw
queue calls a page makes): trainings stop when their caller leaves, one torch job runs at a time, epochs
and minutes are capped, weights come only as uploads, disk is kept small and capped, runs survive a
reload and can be deleted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from gradio_client import Client, handle_file

import app
from conftest import served_app, write_photos, zip_folder
from models.job_slot import job_slot
from trainer.config import TrainConfig
from trainer.stream import WAITING
from trainer.data import IMAGE_EXTENSIONS, MAX_ZIP_BYTES, MAX_ZIP_FILES, is_hidden
from ui import finetune, folder_upload, session
from ui.limits import LOCAL_DEFAULTS, Limits

ROOT = Path(__file__).resolve().parent.parent
TINY = {"weights": "none", "strategy": "full", "optimizer": "adamw", "lr": 1e-3, "image_size": 32, "batch_size": 8,
        "augment": "none"}


@pytest.fixture(scope="module")
def url():
    with served_app() as address:
        yield address


@pytest.fixture(scope="module")
def photos_zip(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("visitor")
    return zip_folder(write_photos(folder / "photos", per_class=6, classes=("red", "blue")), folder / "photos.zip")


class Page:
    """What a browser page sends: uploads, then queue joins by fn_index, answers read from the event stream."""

    def __init__(self, url: str):
        self.url = url
        self.session = uuid.uuid4().hex
        self.http = httpx.Client(base_url=url, timeout=120)
        self.fns = {d["api_name"]: d["id"] for d in self.http.get("config").json()["dependencies"]}

    def upload(self, path: Path) -> dict:
        with open(path, "rb") as f:
            (server_path,) = self.http.post("gradio_api/upload", files={"files": (path.name, f)}).json()
        return {"path": server_path, "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}

    def join(self, fn: str, data: list) -> str:
        body = {"data": data, "fn_index": self.fns[fn], "session_hash": self.session, "event_data": None,
                "trigger_id": None}
        response = self.http.post("gradio_api/queue/join", json=body)
        response.raise_for_status()
        return response.json()["event_id"]

    def messages(self):
        with self.http.stream("GET", "gradio_api/queue/data", params={"session_hash": self.session}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    yield json.loads(line[5:])

    def call(self, fn: str, data: list) -> list:
        """The handler's final outputs; its error text raised as RuntimeError."""
        event = self.join(fn, data)
        for message in self.messages():
            if message.get("event_id") == event and message["msg"] == "process_completed":
                if not message["success"]:
                    raise RuntimeError(message["output"].get("error"))
                return message["output"]["data"]
        raise AssertionError("the event stream ended without an answer")

    def claim(self, token: str | None) -> str:
        """The page load: the browser hands in the token it kept, the server answers with the one to keep."""
        return self.call("claim_visitor", [token])[0]

    def check_zip(self, archive: Path) -> list:
        classes = [""] * finetune.MAX_CLASSES + [None] * finetune.MAX_CLASSES
        return self.call("check_photos", ["Zip file", self.upload(archive), "", None, *classes, None])

    def send_folder(self, folder: Path, **overrides) -> dict:
        """A folder as the folder picker sends it: its photos uploaded in one request, each paired with its path
        from the folder's name on; the other files named only, hidden ones left out; the picker's value."""
        files = [p for p in sorted(folder.rglob("*")) if p.is_file()
                 and not any(is_hidden(part) for part in p.relative_to(folder.parent).parts)]
        photos = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        paths = self.http.post("gradio_api/upload", files=[("files", (p.name, p.read_bytes())) for p in photos]).json()
        rel = lambda p: p.relative_to(folder.parent).as_posix()  # noqa: E731
        return {"name": folder.name, "files": [[rel(p), path] for p, path in zip(photos, paths)],
                "left_out": [rel(p) for p in files if p not in photos], "bytes": sum(p.stat().st_size for p in photos),
                "count": len(files), "sent": time.time(), **overrides}

    def check_folder(self, sent: dict) -> list:
        classes = [""] * finetune.MAX_CLASSES + [None] * finetune.MAX_CLASSES
        return self.call("check_photos", [finetune.FOLDER_UPLOAD, None, "", None, *classes, sent])


def fit_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fit-")]


def wait_until(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.1)


def with_limits(monkeypatch, **limits) -> None:
    monkeypatch.setattr(finetune, "LIMITS", Limits(**{**vars(LOCAL_DEFAULTS), **limits}))
    monkeypatch.setattr(session, "LIMITS", finetune.LIMITS)
    monkeypatch.setattr(folder_upload, "LIMITS", finetune.LIMITS)


# ---------------------------------------------------------------- trainings end with their callers


def test_cancelling_a_training_stops_it_and_the_next_caller_starts_at_once(url, photos_zip):
    job = Client(url, verbose=False).submit(handle_file(str(photos_zip)), {**TINY, "epochs": 10_000}, None,
                                            api_name="/train")
    wait_until(lambda: any(o.get("status") == "training" for o in job.outputs()), 60, "the first epoch")
    run_id = job.outputs()[-1]["run_id"]
    job.cancel()
    wait_until(lambda: not fit_threads(), 20, "the cancelled training's thread ends")
    metrics = json.loads((session.STORE.find(run_id) / "metrics.json").read_text())
    assert metrics["stopped"] == "cancelled" and metrics["epochs_run"] < 10_000  # the best model so far is kept

    started = time.monotonic()
    result = Client(url, verbose=False).predict(handle_file(str(photos_zip)), {**TINY, "epochs": 1}, None,
                                                api_name="/train")
    assert result["status"] == "finished" and time.monotonic() - started < 60


def test_a_page_that_goes_away_mid_training_stops_its_training(url, photos_zip):
    page = Page(url)
    event = page.join("train", [page.upload(photos_zip), {**TINY, "epochs": 10_000}, None])
    updates = 0
    for message in page.messages():  # reading the stream as the page does, then the tab closes
        if message.get("event_id") == event and message["msg"] == "process_generating":
            updates += 1
            if updates == 5:  # a few seconds into the training (it reports at least every second)
                break
    assert fit_threads()
    page.http.close()
    wait_until(lambda: not fit_threads(), 20, "the training of a page that went away ends")


def test_one_torch_job_runs_at_a_time_and_a_waiting_training_says_so(url, photos_zip):
    release = threading.Event()
    holding = threading.Event()

    def other_job():
        with job_slot():
            holding.set()
            release.wait(60)

    threading.Thread(target=other_job, daemon=True).start()
    holding.wait(10)
    job = Client(url, verbose=False).submit(handle_file(str(photos_zip)), {**TINY, "epochs": 1}, None,
                                            api_name="/train")
    try:
        wait_until(lambda: any(o.get("status") == WAITING for o in job.outputs()), 30, "the waiting message")
        time.sleep(1)
        assert all(o.get("status") != "training" for o in job.outputs())  # it waits while the slot is held
    finally:
        release.set()
    assert job.result(timeout=60)["status"] == "finished"


def test_epochs_beyond_the_server_limit_are_refused_and_trainings_stop_at_its_time_limit(url, photos_zip, monkeypatch):
    with_limits(monkeypatch, max_epochs=50, max_train_minutes=0.02)
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="This server trains at most 50 epochs per run; you asked for 51"):
        client.predict(handle_file(str(photos_zip)), {**TINY, "epochs": 51}, None, api_name="/train")
    result = client.predict(handle_file(str(photos_zip)), {**TINY, "epochs": 50}, None, api_name="/train")
    assert result["metrics"]["stopped"] == "time limit" and result["metrics"]["epochs_run"] < 50
    config = json.loads((session.STORE.find(result["run_id"]) / "config.json").read_text())
    assert config["train"]["max_minutes"] == 0.02  # the run says what bounded it


def test_an_experiment_gets_the_time_of_one_training_shared_between_its_runs(monkeypatch):
    with_limits(monkeypatch, max_train_minutes=20)
    config = TrainConfig(max_minutes=20)
    assert finetune.series_bounded(config, 4).max_minutes == 5
    assert finetune.series_bounded(TrainConfig(max_minutes=2), 4).max_minutes == 2  # a shorter own limit stays
    with_limits(monkeypatch, max_train_minutes=0)
    assert finetune.series_bounded(TrainConfig(), 4).max_minutes == 0  # no limit on one's own machine


# ---------------------------------------------------------------- weights only as uploads


def test_remote_visitors_give_weights_as_an_uploaded_file_never_a_server_path(url, photos_zip, monkeypatch, tmp_path):
    import torch
    from safetensors.torch import save_file
    from torchvision.models import resnet18

    monkeypatch.setattr(session, "ON_SPACE", True)  # every visitor of a Space is remote
    client = Client(url, verbose=False)
    answers = []
    for path in ("/etc/passwd", "/no/such/file.safetensors", str(session.STORE.root)):
        with pytest.raises(Exception) as caught:
            client.predict(handle_file(str(photos_zip)), {**TINY, "epochs": 1, "weights": path}, None, api_name="/train")
        answers.append(str(caught.value))
    assert len(set(answers)) == 1 and "uploaded file" in answers[0]  # the same answer: nothing learnt about the path
    weights = tmp_path / "mine.safetensors"
    torch.manual_seed(0)
    save_file(resnet18(weights=None).state_dict(), str(weights))
    result = client.predict(handle_file(str(photos_zip)), {**TINY, "epochs": 1, "weights": "file"},
                            handle_file(str(weights)), api_name="/train")
    assert result["status"] == "finished"


# ---------------------------------------------------------------- disk


def test_a_zip_keeps_only_its_photos_on_disk_and_lists_the_rest(url, photos_zip, tmp_path):
    archive = tmp_path / "with-junk.zip"
    with zipfile.ZipFile(photos_zip) as source, zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            out.writestr(info, source.read(info))
        out.writestr("huge.bin", b"\0" * 20_000_000)  # compresses to a few KB
        out.writestr("red/readme.txt", "not a photo")
    assert archive.stat().st_size < 1_000_000
    result = Client(url, verbose=False).predict(handle_file(str(archive)), {**TINY, "epochs": 1}, None,
                                                api_name="/train")
    run = session.STORE.find(result["run_id"])
    kept = sorted(p.relative_to(run / "data").as_posix() for p in (run / "data").rglob("*") if p.is_file())
    assert kept and all(name.endswith(".png") or name.endswith(".jpg") for name in kept)
    assert sum(p.stat().st_size for p in (run / "data").rglob("*") if p.is_file()) < 1_000_000  # the 20 MB went
    skipped = {item["path"] for item in json.loads((run / "data_report.json").read_text())["skipped"]}
    assert {"huge.bin", "red/readme.txt"} <= skipped


def test_checking_photos_again_replaces_the_previous_upload(url, photos_zip):
    page = Page(url)
    page.claim(None)
    for _ in range(3):
        _, report, _ = page.check_zip(photos_zip)
        assert "**2 classes**" in report
    uploads = session.STORE.visitor_dir(session.visitor(SimpleNamespace(session_hash=page.session))) / "uploads"
    assert len(list(uploads.iterdir())) == 1


def folder_with_junk(root: Path) -> Path:
    """A photo folder as people have them: class subfolders, a note, a stray file, the OS's hidden files."""
    food = write_photos(root / "food", per_class=5, classes=("red", "blue"))
    (food / "notes.txt").write_text("which photos are which")
    (food / "red" / "readme.md").write_text("# red")
    (food / ".DS_Store").write_bytes(b"\0\0")
    return food


def test_a_folder_sent_as_the_picker_sends_it_is_reported_as_its_zip(url, tmp_path):
    page = Page(url)
    page.claim(None)
    food = folder_with_junk(tmp_path)
    _, zip_report, _ = page.check_zip(zip_folder(tmp_path, tmp_path.parent / f"{tmp_path.name}-food.zip"))
    _, folder_report, grid = page.check_folder(page.send_folder(food))
    assert folder_report == zip_report == (
        "**2 classes**, layout: class folders, validation: split (20%, seed 0).\n\n"
        "| class | train | val | test |\n|---|---:|---:|---:|\n| blue | 4 | 1 | 0 |\n| red | 4 | 1 | 0 |\n\n"
        "**Skipped 2 file(s):**\n- `notes.txt`: not inside a class folder\n- `red/readme.md`: not an image file type")
    # Written into the visitor's upload folder, photos only.
    uploads = session.STORE.visitor_dir(session.visitor(SimpleNamespace(session_hash=page.session))) / "uploads"
    (upload,) = uploads.iterdir()
    kept = sorted(p.relative_to(upload).as_posix() for p in upload.rglob("*") if p.is_file())
    assert kept == ["data/food/blue/" + f"blue_{i:02d}.jpg" for i in range(5)] + \
                   ["data/food/red/" + f"red_{i:02d}.jpg" for i in range(5)] + ["data_report.json"]


def test_a_folder_naming_files_gradio_did_not_upload_is_refused_and_nothing_is_written(url, tmp_path):
    page = Page(url)
    page.claim(None)
    sent = page.send_folder(write_photos(tmp_path / "food", per_class=3, classes=("red", "blue")))
    planted = Path(os.environ["GRADIO_TEMP_DIR"]) / "planted" / "red_00.jpg"  # in the upload folder, not uploaded
    planted.parent.mkdir(exist_ok=True)
    planted.write_bytes(b"x")
    data_root = session.STORE.root
    before = sorted(str(p) for p in data_root.rglob("*"))
    for forged in ("/etc/hostname", str(tmp_path / "food" / "red" / "red_00.jpg"), str(planted),
                   sent["files"][0][1] + "/../" + Path(sent["files"][1][1]).parent.name + "/red_01.jpg"):
        files = [[sent["files"][0][0], forged]] + sent["files"][1:]
        with pytest.raises(RuntimeError) as refused:
            page.check_folder({**sent, "files": files})
        assert str(refused.value) == folder_upload.NOT_UPLOADED
    climbing = "food/" + "../" * 12 + "escaped.jpg"  # from the upload folder past the file system's root
    with pytest.raises(RuntimeError) as refused:
        page.check_folder({**sent, "files": [[climbing, sent["files"][0][1]]] + sent["files"][1:]})
    assert str(refused.value) == f"food is unsafe: the entry {climbing!r} points outside its folder"
    for malformed in ({**sent, "files": "all of them"}, {**sent, "left_out": [3]}, {**sent, "files": [["a.jpg"]]}):
        with pytest.raises(RuntimeError) as refused:
            page.check_folder(malformed)
        assert str(refused.value) == folder_upload.NOT_WHOLE
    with pytest.raises(RuntimeError) as refused:
        page.check_folder(None)  # Check pressed before a folder was chosen
    assert str(refused.value) == folder_upload.NOTHING_CHOSEN
    after = sorted(str(p) for p in data_root.rglob("*"))
    visitor = session.STORE.visitor_dir(session.visitor(SimpleNamespace(session_hash=page.session)))
    assert [p for p in after if p not in before and not p.startswith(str(visitor))] == []
    assert not any(visitor.rglob("escaped.jpg")) and not any((up / "escaped.jpg").exists() for up in visitor.parents)


def test_a_folder_over_the_upload_limit_is_refused_whether_the_page_held_it_back_or_sent_it(url, tmp_path, monkeypatch):
    with_limits(monkeypatch, max_upload="2kb")
    page = Page(url)
    page.claim(None)
    sent = page.send_folder(write_photos(tmp_path / "food", per_class=3, classes=("red", "blue")))
    size = sent["bytes"]
    said = (f"food holds {size / 1024:.1f} KB of photos; one upload may hold at most 2 KB. "
            "Choose a folder with fewer or smaller photos")
    held_back = {**sent, "files": []}  # what the page sends when the server's limits say no
    for value in (held_back, {**sent, "bytes": 1}):  # ... and a page that sent it anyway, under-counting
        with pytest.raises(RuntimeError) as refused:
            page.check_folder(value)
        assert str(refused.value) == said
    # What the page asks before sending (the picker's server function): the same limit.
    picker = next(c["id"] for c in page.http.get("config").json()["components"]
                  if c["props"].get("elem_id") == "ft-folder")
    asked = page.http.post("gradio_api/component_server", json={"data": [], "component_id": picker,
                                                                "fn_name": "folder_limits", "session_hash": page.session})
    assert asked.json() == {"max_files": 50_000, "max_bytes": 2048}


def test_a_visitor_over_the_disk_quota_is_told_how_to_make_room(url, photos_zip, monkeypatch):
    with_limits(monkeypatch, visitor_disk_mb=0.01)
    page = Page(url)
    page.claim(None)
    page.check_zip(photos_zip)  # the first upload fits; now the visitor holds more than 10 KB
    with pytest.raises(RuntimeError) as caught:
        page.check_zip(photos_zip)
    assert "this server keeps at most 0.01 MB per visitor. Delete runs you no longer need" in str(caught.value)


def test_a_reloaded_page_keeps_its_runs_and_a_forged_token_gets_none_of_them(url, photos_zip):
    first = Page(url)
    token = first.claim(None)
    first.check_zip(photos_zip)
    final = first.call("train", [first.upload(photos_zip), {**TINY, "epochs": 1}, None])[0]
    assert final["status"] == "finished"

    reloaded = Page(url)
    assert reloaded.claim(token) == token
    assert final["run_id"] in json.dumps(reloaded.call("own_runs", []))
    key = token.split(".")[0]
    for forged in (f"{key}.{'0' * 64}", "../../etc", {"key": key}, key):
        stranger = Page(url)
        assert stranger.claim(forged) != token
        assert final["run_id"] not in json.dumps(stranger.call("own_runs", []))


def test_visitors_delete_their_own_runs_and_no_one_else_s(url, photos_zip):
    owner = Page(url)
    owner.claim(None)
    run_id = owner.call("train", [owner.upload(photos_zip), {**TINY, "epochs": 1}, None])[0]["run_id"]
    stranger = Page(url)
    stranger.claim(None)
    with pytest.raises(RuntimeError, match="That run is not one of yours"):
        stranger.call("delete_run", [run_id])
    owner.call("own_runs", [])  # the page opens its run list, then picks the run
    assert owner.call("delete_own_run", [run_id]) == [f"Run `{run_id}` deleted."]
    with pytest.raises(ValueError):
        session.STORE.find(run_id)


# ---------------------------------------------------------------- the CLI


def test_the_cli_leaves_no_run_folder_behind_when_it_refuses_the_data(tmp_path):
    bad = tmp_path / "photos.zip"
    bad.write_bytes(b"not a zip")
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "trainer", "fit", str(bad), "--out", str(out), "--weights", "none"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "error:" in done.stderr
    assert not out.exists()


# ---------------------------------------------------------------- the limits themselves


def test_limits_are_tight_on_a_space_off_locally_and_each_settable():
    from ui.limits import SPACE_DEFAULTS, limits_from

    assert limits_from({}, on_space=True) == SPACE_DEFAULTS and limits_from({}, on_space=False) == LOCAL_DEFAULTS
    assert SPACE_DEFAULTS.max_epochs and SPACE_DEFAULTS.max_train_minutes and SPACE_DEFAULTS.visitor_disk_mb
    custom = limits_from({"TRANSFER_STUDIO_MAX_EPOCHS": "5", "TRANSFER_STUDIO_VISITOR_DISK_MB": "0"}, on_space=True)
    assert custom.max_epochs == 5 and custom.visitor_disk_mb == 0 and custom.total_disk_mb == SPACE_DEFAULTS.total_disk_mb
    with pytest.raises(SystemExit, match="TRANSFER_STUDIO_MAX_EPOCHS='many' is not a number"):
        limits_from({"TRANSFER_STUDIO_MAX_EPOCHS": "many"}, on_space=False)


@pytest.mark.parametrize("max_upload, folder_bytes", [("500mb", 500 * 2**20), ("64kb", 64 * 2**10),
                                                      ("5gb", MAX_ZIP_BYTES), ("0", MAX_ZIP_BYTES)])
def test_a_picked_folder_may_hold_what_one_upload_may_and_never_more_than_a_zip_may_unpack(monkeypatch, max_upload,
                                                                                          folder_bytes):
    with_limits(monkeypatch, max_upload=max_upload)
    assert folder_upload.folder_limits() == {"max_files": MAX_ZIP_FILES, "max_bytes": folder_bytes}


def test_on_a_space_gradio_sweeps_its_upload_cache_and_caps_each_upload(monkeypatch):
    monkeypatch.setattr(app, "ON_SPACE", True)
    monkeypatch.delenv("TRANSFER_STUDIO_MAX_UPLOAD", raising=False)
    assert app.build_app().delete_cache == (3600, 7200)
    assert app.launch_options()["max_file_size"] == "500mb"
