"""models.run_folder: the one owner of a run folder's files; run folders written before it still open."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
import torch
from safetensors.torch import save_file

from models.backbones import create_model, preprocessing_for
from models.export import export_run
from models.run_folder import RunFolder, RunFolderError
from models.run_store import RunStore
from models.runtime import OnnxClassifier, resolve_model
from trainer.config import RunConfig

# A run folder as the code before the run-folder module wrote it (a zip of 15 photos, 2 epochs at 32 px),
# kept without its 45 MB weights: the tests write random weights of the same shape.
OLD_RUN = Path(__file__).resolve().parent / "fixtures" / "old-run"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def old_run(tmp_path) -> Path:
    run = tmp_path / "visitor" / "20261130-083900-0ldrun00"
    shutil.copytree(OLD_RUN, run)
    torch.manual_seed(0)
    save_file(create_model("resnet18", 3, "none").state_dict(), str(run / "model.safetensors"))
    return run


def test_an_old_run_folder_reads_back_into_typed_configs(old_run):
    folder = RunFolder(old_run)
    record = folder.read_config()
    assert record.labels == ["blue", "green", "red"]
    assert record.preprocessing == preprocessing_for("resnet18", 32)
    config = RunConfig.from_record(record)
    assert (config.train.arch, config.train.strategy, config.train.schedule.epochs) == ("resnet18", "full", 2)
    assert RunConfig.from_dict(json.loads((old_run / "config.json").read_text())) == config
    assert [h["epoch"] for h in folder.read_history()] == [1, 2]
    assert folder.read_metrics()["val"]["count"] == 3 and folder.is_finished()
    # Its report has no source name and its root is the zip's extraction folder: the class names stand in.
    assert folder.summary() == "blue, green, red · resnet18 full · val 100%" and folder.ending() is None


def test_an_old_run_folder_exports_from_its_own_photos_and_classifies(old_run):
    # Its data report names the absolute folder it was trained in, long gone; its photos came along in data/.
    assert not Path(RunFolder(old_run).read_data_report()["root"]).exists()
    record = export_run(old_run)
    assert record["variants"]["fp32"]["passed"] and record["inputs"]["count"] == 3
    metrics = RunFolder(old_run).read_metrics()
    assert metrics["best_epoch"] == 2 and metrics["export"] == record  # the trainer's figures are kept
    classifier = OnnxClassifier(resolve_model(old_run), providers="cpu")
    assert classifier.labels == ["blue", "green", "red"] and classifier.config["strategy"] == "full"
    top = classifier.predict_files([old_run / "data" / "red" / "red_00.jpg"], top_k=3)[0]["predictions"]
    assert sorted(p["label"] for p in top) == ["blue", "green", "red"]


def test_an_old_run_is_listed_and_found_by_its_store(old_run):
    store = RunStore(old_run.parent.parent)
    (info,) = store.runs("visitor")
    assert info.run_id == old_run.name and info.finished_normally
    started = time.mktime((2026, 11, 30, 8, 39, 0, 0, 0, -1))  # its id: 20261130-083900-...
    assert info.name(now=started + 3600) == "blue, green, red · resnet18 full · val 100% · 08:39"
    assert info.name(now=started + 2 * 86400) == "blue, green, red · resnet18 full · val 100% · Nov 30 08:39"
    assert store.find(old_run.name) == old_run.resolve()


def test_an_onnx_file_with_the_old_nested_config_metadata_still_loads(old_run, tmp_path):
    export_run(old_run)
    proto = onnx.load(str(old_run / "model.onnx"))
    for prop in proto.metadata_props:
        if prop.key == "config":  # before: the whole config.json again, labels and preprocessing included
            prop.value = (old_run / "config.json").read_text()
    onnx.save(proto, str(tmp_path / "old.onnx"))
    classifier = OnnxClassifier(tmp_path / "old.onnx", providers="cpu")
    assert classifier.config == json.loads((old_run / "config.json").read_text())["train"]


def test_merging_metrics_keeps_what_others_wrote(tmp_path):
    folder = RunFolder(tmp_path).create()
    folder.write_metrics({"val": {"accuracy": 0.5}, "export": {"old": True}})
    merged = folder.merge_metrics(export={"variants": {}})
    assert merged == folder.read_metrics() == {"val": {"accuracy": 0.5}, "export": {"variants": {}}}


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda run: (run / "config.json").unlink(), "config.json is missing"),
        (lambda run: (run / "config.json").write_text("{not json"), "cannot be read"),
        (lambda run: (run / "config.json").write_text('{"labels": [], "preprocessing": {}, "train": {}}'),
         "incomplete or malformed"),
    ],
)
def test_a_damaged_config_says_which_file_and_why(old_run, damage, message):
    damage(old_run)
    with pytest.raises(RunFolderError, match=message):
        RunFolder(old_run).read_config()


def test_downloads_and_pushes_leave_out_photos_spaces_and_temporaries(old_run):
    (old_run / "space").mkdir()
    (old_run / "space" / "app.py").write_text("")
    (old_run / ".model.safetensors.tmp").write_text("")
    names = {p.relative_to(old_run).as_posix() for p in RunFolder(old_run).shared_files()}
    assert names == {"config.json", "metrics.json", "history.json", "data_report.json", "model.safetensors"}


def _imports(package: str) -> dict[str, set[str]]:
    """{module file: top-level packages it imports}, read from the source (no import needed)."""
    import ast

    found = {}
    for path in sorted((ROOT / package).glob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module.split(".")[0])
        found[path.name] = names
    return found


def test_dependencies_point_one_way_and_the_core_imports_no_gradio():
    for package in ("trainer", "models"):
        for module, names in _imports(package).items():
            assert "gradio" not in names, f"{package}/{module} imports gradio"
    for module, names in _imports("models").items():
        assert "trainer" not in names, f"models/{module} imports trainer/"
    assert len((ROOT / "app.py").read_text().splitlines()) < 150  # app.py is wiring only


def test_serving_a_run_folder_needs_no_torch(old_run):
    export_run(old_run)
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any import of torch now fails\n"
        "from models.run_store import RunStore\n"
        "from models.serving import ModelServer\n"
        "import models.hub, models.metrics, models.run_folder\n"
        f"server = ModelServer(RunStore({str(old_run.parent.parent)!r}))\n"
        f"answer = server.classify([{str(old_run / 'data/red/red_00.jpg')!r}], {old_run.name!r}, 1, False)\n"
        "print(answer.results[0]['predictions'][0]['label'], answer.provider)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    label, provider = result.stdout.split()
    assert label in ("blue", "green", "red") and provider == "CPUExecutionProvider"
