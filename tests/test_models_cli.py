"""`python -m models`: export and predict subcommands, run as a user runs them (subprocesses, real files)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from models.__main__ import get_args_parser
from test_export import LABELS, SPEC, colour_photo, fit_colour_model
from trainer.config import RunConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]


def make_run(root: Path, per_class: int = 12) -> Path:
    """A finished run folder (images listed in data_report.json) whose head tells the colours apart."""
    rng = np.random.default_rng(0)
    data, run = root / "data", root / "run"
    run.mkdir(parents=True)
    files = {"train": [], "val": [], "test": []}
    inputs, targets = [], []
    for i in range(len(LABELS) * per_class):
        label = i % len(LABELS)
        rel = f"{LABELS[label]}/{i}.png"
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        image = colour_photo(rng, label, 40 + 4 * (i % 5), 48)
        image.save(data / rel)
        files["val" if i >= 2 * per_class else "train"].append([rel, LABELS[label]])
        inputs.append(SPEC.to_array(image))
        targets.append(label)
    model = fit_colour_model(torch.from_numpy(np.stack(inputs)), torch.tensor(targets))
    config = RunConfig(TrainConfig(arch="resnet18", weights="none", image_size=64), LABELS, SPEC)
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    save_file(model.eval().state_dict(), str(run / "model.safetensors"))
    (run / "data_report.json").write_text(json.dumps({"root": str(data), "files": files}))
    return run


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "models", *map(str, args)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A run folder after `python -m models export RUN_DIR --int8`, and that command's result."""
    run = make_run(tmp_path_factory.mktemp("cli"))
    return run, cli("export", run, "--int8")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    paths = {}
    for name, label in (("red", 0), ("blue", 2)):
        paths[name] = folder / f"{name}.jpg"
        colour_photo(rng, label, 90, 60).save(paths[name], quality=95)
    paths["bad"] = folder / "bad.jpg"
    paths["bad"].write_bytes(b"\xff\xd8\xff\xe0 a jpeg header and then nothing")
    return paths


def test_export_int8_writes_both_models_and_prints_parity(exported):
    run, result = exported
    assert result.returncode == 0, result.stderr
    assert (run / "model.onnx").is_file() and (run / "model.int8.onnx").is_file()
    assert not (run / "model.fp16.onnx").exists()
    lines = result.stdout.splitlines()
    export = json.loads((run / "metrics.json").read_text())["export"]
    speed = {kind: export["variants"][kind]["speed"]["images_per_s"] for kind in ("fp32", "int8")}
    assert lines[0] == "Checked on 12 inputs (data_report.json val), opset 20:"
    assert lines[1].startswith("  fp32: model.onnx (") and "vs torch" in lines[1] and "agreement 100.0%" in lines[1]
    assert lines[1].endswith(f", accuracy 100.0%, {speed['fp32']:.0f} img/s (batch 8, CPUExecutionProvider)")
    assert lines[2].startswith("  int8: model.int8.onnx (") and "vs fp32" in lines[2] and "points)" in lines[2]
    assert lines[2].endswith(f" points), {speed['int8']:.0f} img/s (batch 8, CPUExecutionProvider)")
    assert lines[3] == (f"Served by default: {export['served']} (the fastest that passed, within 1 point of fp32's "
                        "accuracy)") and len(lines) == 4
    assert export["variants"]["fp32"]["max_abs_logit_diff"] < 1e-4 and export["variants"]["int8"]["passed"]


def test_predict_json_answers_in_input_order_with_an_error_entry_and_exit_1(exported, images):
    run, _ = exported
    result = cli("predict", run, images["red"], images["bad"], images["blue"], "--json", "--top-k", "2")
    assert result.returncode == 1
    entries = json.loads(result.stdout)
    assert [e["path"] for e in entries] == [str(images[name]) for name in ("red", "bad", "blue")]
    assert [p["label"] for p in entries[0]["predictions"]][0] == "red"
    assert [p["label"] for p in entries[2]["predictions"]][0] == "blue"
    assert all(len(e["predictions"]) == 2 and e["predictions"][0]["score"] > 0.5 for e in (entries[0], entries[2]))
    assert set(entries[1]) == {"path", "error"} and entries[1]["error"].startswith("unreadable image: ")


@pytest.mark.parametrize("model", ["run_folder", "onnx_file", "int8_file"])
def test_predict_accepts_run_folders_and_onnx_files_and_prints_one_line_per_image(exported, images, model):
    run, _ = exported
    ref = {"run_folder": run, "onnx_file": run / "model.onnx", "int8_file": run / "model.int8.onnx"}[model]
    result = cli("predict", ref, images["blue"], images["red"], "--top-k", "1")
    assert result.returncode == 0, result.stderr
    blue, red = result.stdout.splitlines()
    assert blue.startswith(f"{images['blue']}: blue ") and red.startswith(f"{images['red']}: red ")


def test_predict_serves_the_run_s_default_or_the_variant_picked_and_says_which_on_stderr(exported, images):
    run, _ = exported
    default = json.loads((run / "metrics.json").read_text())["export"]["served"]
    other = "fp32" if default == "int8" else "int8"
    names = {"fp32": "fp32 (model.onnx)", "int8": "INT8 (model.int8.onnx)"}
    result = cli("predict", run, images["red"], "--top-k", "1")
    assert result.returncode == 0 and result.stdout.startswith(f"{images['red']}: red ")
    assert result.stderr.splitlines()[-1] == f"Served by {names[default]}, the run's default"
    result = cli("predict", run, images["red"], "--top-k", "1", "--variant", other, "--json")
    assert result.returncode == 0 and json.loads(result.stdout)[0]["predictions"][0]["label"] == "red"
    assert result.stderr.splitlines()[-1] == f"Served by {names[other]}, as picked"
    result = cli("predict", run / "model.int8.onnx", images["red"])  # a file is served as it is, and says nothing
    assert result.returncode == 0 and "Served by" not in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (("predict", "hf://noslash", "x.jpg"), "not a valid repository name"),
        (("predict", "no/such/model.onnx", "x.jpg"), "No model at no/such/model.onnx"),
        (("export", "no/such/run"), "Run folder no/such/run does not exist"),
        (("predict", "no/such/model.onnx", "x.jpg", "--variant", "int8"), "No model at no/such/model.onnx"),
    ],
)
def test_failures_exit_1_with_a_one_line_message(args, message):
    from conftest import run_main
    from models.__main__ import main

    result = run_main(main, *args)
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line


def test_parser_has_export_and_predict_subcommands():
    parser = get_args_parser()
    export = parser.parse_args(["export", "runs/a", "--fp16", "--int8"])
    assert (export.command, export.run_dir, export.fp16, export.int8) == ("export", "runs/a", True, True)
    export = parser.parse_args(["export", "runs/a", "--no-int8"])
    assert (export.fp16, export.int8) == (None, False)  # None: INT8 by default, fp16 where CUDA serves it
    assert parser.parse_args(["predict", "runs/a", "x.jpg", "--variant", "int8"]).variant == "int8"
    predict = parser.parse_args(["predict", "runs/a", "x.jpg", "y.png", "--top-k", "3", "--json"])
    assert (predict.model, predict.images, predict.top_k, predict.json) == ("runs/a", ["x.jpg", "y.png"], 3, True)
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "runs/a"])  # at least one image
