"""models.run_import: a run downloaded as a zip, or pushed to the Hub, brought back as a run folder.

A real run is trained once (ResNet-18 at 32 px, seconds), zipped by RunStore and pushed by models.hub
to the fake Hub of tests/hub_server.py, served over real HTTP on loopback; huggingface_hub's own
client does every request.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from pathlib import Path

import gradio as gr
import pytest
from conftest import symlink_entry, tiny_config, write_photos, zip_folder
from hub_server import REPO as REPO_PATTERN
from hub_server import FakeHub
from hub_server import HubError as FakeHubError
from huggingface_hub import HfApi, constants

from models import hub
from models.hub import HubError
from models.run_folder import RunFolder, RunFolderError
from models.run_import import MAX_RUN_ZIP_BYTES, MAX_RUN_ZIP_ENTRIES, download_run, import_run_zip
from models.run_store import RunStore
from trainer.train import fit

ALICE = "hf_AliceWriteToken0123456789abcdefXYZ"
BOB = "hf_BobReadOnlyToken0123456789abcdefXY"
TOKENS = {ALICE: ("alice", "write"), BOB: ("bob", "read")}
EXPERIMENT = {"series": "lr-sweep", "kind": "lr", "arm": "lr=0.001", "index": 1, "of": 2}

# huggingface_hub's own LFS upload passes a file object as `data=`; httpx2 warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def _isolate_hub_client(mp: pytest.MonkeyPatch, home: Path) -> None:
    """No real login, cache or endpoint leaks in: huggingface_hub reads these at import, so patch both."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        mp.delenv(name, raising=False)
    mp.setenv("HF_HUB_DISABLE_XET", "1")
    mp.setenv("HF_HOME", str(home))
    mp.setattr(constants, "HF_HUB_DISABLE_XET", True)
    mp.setattr(constants, "HF_HUB_OFFLINE", False)  # loopback only: fine even where CI sets offline mode
    mp.setattr(constants, "HF_HOME", str(home))
    mp.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    mp.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    mp.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))


class RunHub(FakeHub):
    """The fake Hub, plus what snapshot_download asks besides single files.

    It lists a repo's files (GET /api/models/{repo}/tree/{rev}) and then fetches each at the commit it
    listed, where FakeHub only knows the "main" revision: the current commit is read as "main".
    """

    def handle(self, method, path, headers, body, query=""):
        tree = re.fullmatch(rf"/api/models/{REPO_PATTERN}/tree/(?P<rev>[^/]+)", path)
        if tree and method == "GET":
            with self.lock:
                return self.tree(headers, tree["repo"], tree["rev"])
        path = re.sub(r"/(resolve|revision)/([0-9a-f]{40})(?=/|$)", self._main_if_current, path)
        return super().handle(method, path, headers, body, query)

    def tree(self, headers, repo_id, rev):
        repo = self.readable(headers, "model", repo_id)
        if rev not in ("main", repo.sha):
            raise FakeHubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        entries = []
        for name, data in sorted(repo.files.items()):
            entry = {"type": "file", "path": name, "size": len(data), "oid": repo.oid(name)}
            if name in repo.lfs:
                entry["lfs"] = {"oid": repo.oid(name), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        return 200, {"Content-Type": "application/json"}, json.dumps(entries).encode()

    def _main_if_current(self, match: re.Match) -> str:
        current = {repo.sha for repo in self.repos.values()}
        return f"/{match[1]}/main" if match[2] in current else match[0]


# ---------------------------------------------------------------------------------------------
# Fixtures: one real run, trained once


@pytest.fixture(scope="module")
def module_env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        _isolate_hub_client(mp, tmp_path_factory.mktemp("hf_home"))
        yield


@pytest.fixture(autouse=True)
def hub_env(module_env, monkeypatch, tmp_path):
    _isolate_hub_client(monkeypatch, tmp_path / "hf_home")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished run trained from a zip of photos, so its folder holds the photos under data/."""
    root = tmp_path_factory.mktemp("import_run")
    photos = zip_folder(write_photos(root / "photos", per_class=6), root / "photos.zip")
    fit(photos, tiny_config(epochs=1), root / "run")  # one epoch keeps the file fast; its history has an entry
    run = RunFolder(root / "run")
    run.write_experiment(EXPERIMENT)  # as an arm of an experiment would have it
    assert run.is_finished() and any(run.data_dir.rglob("*.jpg"))
    return run.path


@pytest.fixture(scope="module")
def run_zip(run_dir, tmp_path_factory) -> Path:
    """The run as the app's Download button gives it."""
    return RunStore(tmp_path_factory.mktemp("store")).zip_run(run_dir)


@pytest.fixture(scope="module")
def fake_hub():
    with RunHub(TOKENS) as server:
        yield server


@pytest.fixture(scope="module")
def pushed(module_env, run_dir, fake_hub) -> str:
    hub.push_run(run_dir, "alice/colours", token=ALICE, endpoint=fake_hub.url)
    hub.push_run(run_dir, "alice/secret", token=ALICE, endpoint=fake_hub.url, private=True)
    return "hf://alice/colours"


def assert_same_run(imported: Path, original: Path) -> None:
    ours, theirs = RunFolder(imported), RunFolder(original)
    assert ours.read_config() == theirs.read_config()
    assert ours.read_metrics() == theirs.read_metrics()
    assert ours.read_history() == theirs.read_history() and ours.read_history()
    assert ours.read_experiment() == EXPERIMENT
    assert ours.weights.read_bytes() == theirs.weights.read_bytes()
    assert ours.onnx().read_bytes() == theirs.onnx().read_bytes()
    assert ours.is_finished()


def files_in(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


# ---------------------------------------------------------------------------------------------
# A downloaded run zip


def test_a_downloaded_zip_becomes_the_same_run(run_dir, run_zip, tmp_path):
    with zipfile.ZipFile(run_zip) as zf:
        assert all(name.startswith(f"{run_dir.name}/") for name in zf.namelist())  # one top folder

    dest = import_run_zip(run_zip, tmp_path / "imported")

    assert dest == tmp_path / "imported"
    assert_same_run(dest, run_dir)
    run = RunFolder(dest)
    assert run.read_predictions() == RunFolder(run_dir).read_predictions()
    assert run.read_data_report() == RunFolder(run_dir).read_data_report()
    assert files_in(dest) == {p.name for p in RunFolder(run_dir).shared_files()}  # no folder level left


def test_a_zip_with_photos_and_other_files_imports_the_run_files_only(run_dir, tmp_path):
    archive = zip_folder(run_dir, tmp_path / "whole-folder.zip")  # the files at the zip's root, data/ included
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("README.md", "# my run")
        zf.writestr("space/app.py", "print('hi')")
        zf.writestr("notes/config.json", "{}")  # a config.json one folder down beside the root's: not the run's
    with zipfile.ZipFile(archive) as zf:
        assert any(name.startswith("data/") for name in zf.namelist())

    dest = import_run_zip(archive, tmp_path / "imported")

    assert_same_run(dest, run_dir)
    assert not (dest / "data").exists() and not (dest / "space").exists() and not (dest / "README.md").exists()
    assert files_in(dest) <= {"config.json", "metrics.json", "history.json", "data_report.json", "predictions.json",
                              "experiment.json", "model.safetensors", "model.onnx", "model.fp16.onnx",
                              "model.int8.onnx"}


def test_an_existing_empty_folder_is_filled_and_a_used_one_refused(run_zip, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert import_run_zip(run_zip, empty) == empty and RunFolder(empty).is_finished()
    with pytest.raises(ValueError, match="A run is imported into an empty folder"):
        import_run_zip(run_zip, empty)


# Hostile and wrong zips: each builder writes the zip's entries; a real config.json goes in where it
# matters, so only the fault named is what refuses it.


def _run_files(zf: zipfile.ZipFile, run_dir: Path, names=("config.json", "metrics.json")) -> None:
    for name in names:
        zf.write(run_dir / name, f"run/{name}")


def _patch_central(archive: Path, entry: str, offset: int, value: int, fmt: str = "<I") -> None:
    """Rewrite a field of `entry`'s central-directory header (what zipfile believes); its data stays."""
    data = bytearray(archive.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at != -1:
        name_length = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + name_length] == entry.encode():
            struct.pack_into(fmt, data, at + offset, value)
        at = data.find(b"PK\x01\x02", at + 4)
    archive.write_bytes(bytes(data))


def _declare_size(archive: Path, entry: str, size: int) -> None:
    _patch_central(archive, entry, 24, size)  # the uncompressed size


def _too_many(zf, run_dir):
    _run_files(zf, run_dir)
    for i in range(MAX_RUN_ZIP_ENTRIES - 1):
        zf.writestr(f"run/data/red/{i:03d}.jpg", b"")


BOMB = 0xF000_0000  # about 4 GB declared for a few bytes


HOSTILE = {
    "dot-dot": (
        lambda zf, run: (_run_files(zf, run), zf.writestr("run/../../evil.txt", "x")),
        "{name} is unsafe: the entry 'run/../../evil.txt' points outside its folder",
    ),
    "absolute": (
        lambda zf, run: (_run_files(zf, run), zf.writestr(zipfile.ZipInfo("/tmp/evil.txt"), "x")),
        "{name} is unsafe: the entry '/tmp/evil.txt' points outside its folder",
    ),
    "backslash": (
        lambda zf, run: (_run_files(zf, run), zf.writestr("run\\..\\..\\evil.txt", "x")),
        "{name} is unsafe: the entry 'run\\\\..\\\\..\\\\evil.txt' points outside its folder",
    ),
    "drive-letter": (
        lambda zf, run: (_run_files(zf, run), zf.writestr("C:/evil.txt", "x")),
        "{name} is unsafe: the entry 'C:/evil.txt' points outside its folder",
    ),
    "symlink": (
        lambda zf, run: (_run_files(zf, run), zf.writestr(symlink_entry("run/model.safetensors"), "/etc/passwd")),
        "{name} is unsafe: the entry 'run/model.safetensors' is a symbolic link",
    ),
    "too-many-entries": (
        _too_many,
        f"{{name}} holds {MAX_RUN_ZIP_ENTRIES + 1} entries; a run zip holds a few files "
        f"(the limit is {MAX_RUN_ZIP_ENTRIES})",
    ),
    "no-config": (
        lambda zf, run: _run_files(zf, run, ("metrics.json", "history.json", "model.safetensors")),
        "{name} is not a run downloaded from Transfer Studio: it has no config.json",
    ),
    "no-metrics": (
        lambda zf, run: _run_files(zf, run, ("config.json", "model.safetensors")),
        "{name} is not a run downloaded from Transfer Studio: it has no metrics.json (its training never finished)",
    ),
    "no-weights": (
        lambda zf, run: _run_files(zf, run, ("config.json", "metrics.json", "history.json")),
        "{name} is not a run downloaded from Transfer Studio: it has no model.safetensors (the trained weights)",
    ),
    "two-runs": (
        lambda zf, run: (_run_files(zf, run), zf.write(run / "config.json", "other/config.json")),
        "{name} holds more than one run; add them one zip at a time",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("dest_exists", [False, True], ids=["new-dest", "empty-dest"])
def test_hostile_and_wrong_zips_are_refused_and_leave_nothing(case, dest_exists, run_dir, tmp_path):
    build, message = HOSTILE[case]
    archive = tmp_path / f"{case}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        build(zf, run_dir)
    dest = tmp_path / "imported"
    if dest_exists:
        dest.mkdir()

    with pytest.raises(RunFolderError) as refused:
        import_run_zip(archive, dest)

    assert str(refused.value) == message.format(name=archive.name)
    assert (list(dest.iterdir()) == []) if dest_exists else not dest.exists()
    assert not (tmp_path / "evil.txt").exists()


def test_an_encrypted_entry_is_refused(run_dir, tmp_path):
    archive = tmp_path / "locked.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        _run_files(zf, run_dir, ("config.json", "metrics.json", "model.safetensors"))
    _patch_central(archive, "run/model.safetensors", 8, 0x1, "<H")  # the "encrypted" flag

    with pytest.raises(RunFolderError) as refused:
        import_run_zip(archive, tmp_path / "imported")

    assert str(refused.value) == "locked.zip is password-protected; use the zip as Transfer Studio made it"
    assert not (tmp_path / "imported").exists()


def test_a_declared_size_bomb_is_refused_before_anything_is_written(run_dir, tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        _run_files(zf, run_dir)
        zf.writestr("run/model.safetensors", b"\0" * 1000)
    _declare_size(archive, "run/model.safetensors", BOMB)
    declared = BOMB + sum((run_dir / name).stat().st_size for name in ("config.json", "metrics.json"))

    with pytest.raises(RunFolderError) as refused:
        import_run_zip(archive, tmp_path / "imported")

    assert str(refused.value) == f"bomb.zip would unpack to {declared:,} bytes; the limit is {MAX_RUN_ZIP_BYTES:,}"
    assert not (tmp_path / "imported").exists()


def test_a_damaged_zip_is_refused_and_what_was_unpacked_removed(run_dir, tmp_path):
    archive = tmp_path / "damaged.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # stored: the bytes of the weights appear as they are
        _run_files(zf, run_dir)
        zf.writestr("run/model.safetensors", b"weights " * 100)
    data = archive.read_bytes()
    archive.write_bytes(data.replace(b"weights weights", b"WEIGHTS weights", 1))  # the CRC no longer matches

    with pytest.raises(RunFolderError) as refused:
        import_run_zip(archive, tmp_path / "imported")

    assert str(refused.value) == "damaged.zip is damaged and cannot be unpacked (BadZipFile in model.safetensors)"
    assert not (tmp_path / "imported").exists()


@pytest.mark.parametrize("content", [b"just some text, not a zip", b"PK\x03\x04 cut short", b""])
def test_a_file_that_is_no_zip_is_refused(content, tmp_path):
    archive = tmp_path / "run.zip"
    archive.write_bytes(content)
    with pytest.raises(RunFolderError) as refused:
        import_run_zip(archive, tmp_path / "imported")
    assert str(refused.value) == "run.zip is not a valid .zip file (it may be damaged or another format)"
    assert not (tmp_path / "imported").exists()


def test_a_malformed_config_is_named_without_the_folder_it_was_unpacked_into(run_dir, tmp_path):
    archive = tmp_path / "bad-config.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        _run_files(zf, run_dir, ("metrics.json", "model.safetensors"))
        zf.writestr("run/config.json", json.dumps({"labels": [], "train": {}}))

    with pytest.raises(RunFolderError) as refused:
        import_run_zip(archive, tmp_path / "imported")

    assert str(refused.value) == (
        "bad-config.zip is damaged: config.json is incomplete or malformed "
        "(ValueError: labels must be a non-empty list of class names)"
    )
    assert not (tmp_path / "imported").exists()


# ---------------------------------------------------------------------------------------------
# A run pushed to the Hub


def test_a_pushed_run_downloads_as_the_same_run(pushed, fake_hub, run_dir, tmp_path):
    dest = download_run(pushed, tmp_path / "pulled", endpoint=fake_hub.url)

    assert dest == tmp_path / "pulled"
    assert_same_run(dest, run_dir)  # history.json and experiment.json came along with the push
    assert files_in(dest) == {"config.json", "metrics.json", "history.json", "experiment.json",
                              "model.safetensors", "model.onnx"}  # no .cache, card, labels or figure
    assert download_run("alice/colours", tmp_path / "plain-id", endpoint=fake_hub.url).is_dir()


def test_without_the_machines_login_a_private_run_is_refused(pushed, fake_hub, run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", ALICE)  # this machine is logged in, as a shared server's owner would be
    Path(constants.HF_TOKEN_PATH).parent.mkdir(parents=True, exist_ok=True)
    Path(constants.HF_TOKEN_PATH).write_text(ALICE)
    first = len(fake_hub.requests)

    with pytest.raises(HubError) as refused:
        download_run("hf://alice/secret", tmp_path / "pulled", endpoint=fake_hub.url, use_login=False)

    assert str(refused.value) == (
        f"Repository alice/secret was not found on {fake_hub.url} (or it is private and this token cannot see it)"
    )
    assert not (tmp_path / "pulled").exists()
    requests = fake_hub.requests[first:]
    assert requests and not any(k.lower() == "authorization" for r in requests for k, _ in r.headers)

    # The visitor's own token is used; so is the machine's login where it may stand in.
    assert_same_run(download_run("hf://alice/secret", tmp_path / "own", token=ALICE, endpoint=fake_hub.url,
                                 use_login=False), run_dir)
    assert_same_run(download_run("hf://alice/secret", tmp_path / "login", endpoint=fake_hub.url), run_dir)


def test_a_repo_without_a_run_is_refused_and_an_old_push_without_weights_accepted(run_dir, fake_hub, tmp_path):
    api = HfApi(endpoint=fake_hub.url, token=ALICE)
    api.create_repo("alice/photos-only", exist_ok=True)
    api.upload_file(path_or_fileobj=b"# not a run", path_in_repo="README.md", repo_id="alice/photos-only")
    with pytest.raises(RunFolderError) as refused:
        download_run("hf://alice/photos-only", tmp_path / "pulled", endpoint=fake_hub.url)
    assert str(refused.value) == (
        "hf://alice/photos-only is not a run downloaded from Transfer Studio: it has no config.json"
    )
    assert not (tmp_path / "pulled").exists()

    api.create_repo("alice/old-push", exist_ok=True)
    for name in ("config.json", "metrics.json"):
        api.upload_file(path_or_fileobj=run_dir / name, path_in_repo=name, repo_id="alice/old-push")
    dest = download_run("hf://alice/old-push", tmp_path / "old", endpoint=fake_hub.url)
    assert files_in(dest) == {"config.json", "metrics.json"}  # nothing made up for what the push lacked
    assert RunFolder(dest).read_config() == RunFolder(run_dir).read_config()


def test_hub_failures_are_plain_words(pushed, fake_hub, tmp_path):
    with pytest.raises(HubError) as missing:
        download_run("hf://alice/nothing-here", tmp_path / "pulled", endpoint=fake_hub.url)
    assert str(missing.value) == (
        f"Repository alice/nothing-here was not found on {fake_hub.url} (or it is private and this token cannot see it)"
    )
    with pytest.raises(HubError, match="is not a valid repository name"):
        download_run("hf://not a repo", tmp_path / "pulled", endpoint=fake_hub.url)
    assert not (tmp_path / "pulled").exists()


def test_a_pushed_run_too_large_for_a_run_is_refused_before_downloading(pushed, fake_hub, tmp_path, monkeypatch):
    from models import run_import

    monkeypatch.setattr(run_import, "MAX_RUN_ZIP_BYTES", 1000)
    first = len(fake_hub.requests)
    with pytest.raises(RunFolderError) as refused:
        download_run(pushed, tmp_path / "pulled", endpoint=fake_hub.url)
    assert re.fullmatch(r"hf://alice/colours holds [\d,]+ bytes of run files; a run here may hold at most 1,000",
                        str(refused.value)), str(refused.value)
    assert not (tmp_path / "pulled").exists()
    assert not any("/resolve/" in r.path for r in fake_hub.requests[first:])  # no file was fetched


def test_the_compare_section_adds_a_pushed_run_as_the_visitor_s_own(pushed, fake_hub, monkeypatch):
    from types import SimpleNamespace

    from ui import compare, session

    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("HF_TOKEN", ALICE)  # the server's owner is logged in
    visitor = SimpleNamespace(session_hash="hub-visitor", client=SimpleNamespace(host="127.0.0.1"))
    message, picker = compare.add_run_hub(" hf://alice/colours ", [], visitor)
    (added,) = session.STORE.runs("hub-visitor")
    assert message.startswith("Added ") and picker["value"] == [added.run_id]
    assert RunFolder(added.path).has_results() and RunFolder(added.path).read_history()
    # On a shared server a stranger cannot reach the owner's private run through the owner's login.
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    with pytest.raises(gr.Error) as refused:
        compare.add_run_hub("hf://alice/secret", [added.run_id], visitor)
    assert refused.value.message.startswith("Repository alice/secret was not found on ")
    assert len(session.STORE.runs("hub-visitor")) == 1  # nothing half-added
