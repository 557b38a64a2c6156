"""models.export: one self-contained .onnx with metadata, parity with PyTorch, fp16 / INT8 variants, metrics.json."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from models import export
from models.backbones import create_model, preprocessing_for
from models.export import ExportError, choose_served, export_model, export_onnx, export_run, measure_speed
from models.preprocess import load_rgb
from models.runtime import OnnxClassifier
from trainer.config import RunConfig, TrainConfig

LABELS = ["red", "green", "blue"]
COLOURS = [(220, 30, 30), (30, 200, 40), (30, 40, 220)]
SPEC = preprocessing_for("resnet18", 64)  # resize 73, centre crop 64


def colour_photo(rng, label: int, width: int, height: int) -> Image.Image:
    noise = rng.normal(0, 40, (height, width, 3))
    return Image.fromarray(np.clip(np.array(COLOURS[label]) + noise, 0, 255).astype(np.uint8))


def fit_colour_model(inputs: torch.Tensor, targets: torch.Tensor) -> nn.Module:
    """A ResNet-18 (random backbone) whose head tells the colours apart; trains in about a second."""
    torch.manual_seed(0)
    model = create_model("resnet18", len(LABELS), "none")
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average: running stats become this batch's statistics
    model.train()
    with torch.no_grad():
        model(inputs)
        features = torch.flatten(nn.Sequential(*list(model.children())[:-1]).eval()(inputs), 1)
    model.eval()
    optimizer = torch.optim.Adam(model.fc.parameters(), lr=0.01)
    for _ in range(100):
        loss = nn.functional.cross_entropy(model.fc(features), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def make_run(root, per_class: int = 15):
    """A finished run folder as the trainer leaves it; returns (run_dir, model, val_inputs, val_targets)."""
    rng = np.random.default_rng(0)
    data, run = root / "data", root / "run"
    run.mkdir(parents=True)
    files = {"train": [], "val": [], "test": []}
    arrays = {"train": [], "val": []}
    for i in range(len(LABELS) * per_class):
        label, split = i % len(LABELS), "val" if i >= 2 * per_class else "train"
        rel = f"{LABELS[label]}/{i}.png"
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        colour_photo(rng, label, 32 + 8 * (i % 4), 48).save(data / rel)
        files[split].append([rel, LABELS[label]])
        arrays[split].append(SPEC.to_array(load_rgb(data / rel)))
    train_targets = torch.tensor([LABELS.index(label) for _, label in files["train"]])
    model = fit_colour_model(torch.from_numpy(np.stack(arrays["train"])), train_targets)
    config = RunConfig(TrainConfig(arch="resnet18", weights="none", image_size=64), LABELS, SPEC)
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    save_file(model.state_dict(), str(run / "model.safetensors"))
    (run / "metrics.json").write_text(json.dumps({"best_val_accuracy": 1.0}))
    (run / "data_report.json").write_text(json.dumps({"root": str(data), "files": files}))
    val_targets = np.array([LABELS.index(label) for _, label in files["val"]])
    return run, model, np.stack(arrays["val"]), val_targets


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run, model, inputs, targets = make_run(tmp_path_factory.mktemp("export"))
    record = export_run(run, fp16=True, int8=True)
    return run, model, inputs, targets, record


def torch_logits(model, inputs):
    with torch.inference_mode():
        return model(torch.from_numpy(inputs)).numpy()


def test_export_writes_one_self_contained_file_within_parity_targets(exported):
    run, _, inputs, _, record = exported
    fp32 = record["variants"]["fp32"]
    assert fp32["max_abs_logit_diff"] < 1e-4
    assert fp32["top1_agreement"] == 1.0 and fp32["passed"] is True
    assert fp32["accuracy"] == 1.0
    assert record["inputs"] == {"count": len(inputs), "source": "data_report.json val", "labelled": True}
    assert not list(run.glob("*.data")) and not list(run.glob(".*tmp"))  # weights inside, no temp files left
    assert (run / "model.onnx").stat().st_size > 40e6  # ResNet-18's 11.7M float32 weights


def test_metrics_json_keeps_trainer_figures_and_gains_export(exported):
    run, _, _, _, record = exported
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_val_accuracy"] == 1.0
    assert metrics["export"] == json.loads(json.dumps(record))
    assert set(metrics["export"]["variants"]) == {"fp32", "fp16", "int8"}


def test_onnx_file_alone_carries_labels_preprocessing_config_and_classifies_like_torch(exported, tmp_path):
    run, model, inputs, _, _ = exported
    alone = tmp_path / "renamed.onnx"
    shutil.copy(run / "model.onnx", alone)
    classifier = OnnxClassifier(alone, providers="cpu")
    assert classifier.labels == LABELS
    assert classifier.spec == SPEC
    assert classifier.config == json.loads((run / "config.json").read_text())["train"]  # the training config, once
    rng = np.random.default_rng(1)
    photos = [colour_photo(rng, label, 70, 50) for label in (0, 1, 2, 2, 0)]
    predicted = [top[0][0] for top in classifier.predict(photos, top_k=1)]
    expected = torch_logits(model, np.stack([SPEC.to_array(p) for p in photos])).argmax(1)
    assert predicted == [LABELS[i] for i in expected] == ["red", "green", "blue", "blue", "red"]


@pytest.mark.parametrize("batch", [1, 5])
def test_dynamic_batch_dimension_matches_torch(exported, batch):
    run, model, inputs, _, _ = exported
    logits = OnnxClassifier(run / "model.onnx", providers="cpu").predict_arrays(inputs[:batch])
    assert logits.shape == (batch, len(LABELS))
    np.testing.assert_allclose(logits, torch_logits(model, inputs[:batch]), atol=1e-4)


def test_fp16_and_int8_variants_load_and_meet_targets(exported):
    run, _, inputs, targets, record = exported
    fp16, int8 = record["variants"]["fp16"], record["variants"]["int8"]
    assert fp16["passed"] and fp16["max_abs_logit_diff"] < 0.05 and fp16["top1_agreement"] >= 0.995
    assert int8["passed"] and int8["top1_agreement"] >= 0.95 and int8["accuracy_change"] >= -1 / len(targets)
    assert "MinMax calibration" in int8["method"]
    assert int8["size_bytes"] < record["variants"]["fp32"]["size_bytes"] / 3
    for name in ("model.fp16.onnx", "model.int8.onnx"):
        classifier = OnnxClassifier(run / name, providers="cpu")
        assert classifier.labels == LABELS and classifier.spec == SPEC
        predictions = classifier.predict_arrays(inputs).argmax(1)
        assert (predictions == targets).mean() >= 1 - 1 / len(targets)


def test_failed_parity_removes_the_file_and_raises(exported, tmp_path, monkeypatch):
    _, model, inputs, _, _ = exported
    monkeypatch.setitem(export.TARGETS["fp32"], "max_abs_logit_diff", 0.0)  # no float difference passes
    path = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match="does not match PyTorch: max \\|logit diff\\|"):
        export_onnx(model, LABELS, SPEC, {"labels": LABELS}, path, check_inputs=inputs[:2])
    assert not path.exists() and not list(tmp_path.iterdir())


def test_given_inputs_are_used_and_a_variant_missing_its_target_is_removed(exported, tmp_path, monkeypatch):
    run, _, inputs, targets, _ = exported
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(run / name, copy / name)
    monkeypatch.setitem(export.TARGETS["int8"], "min_top1_agreement", 1.01)  # unreachable
    record = export_run(copy, inputs=inputs[:6], targets=targets[:6], int8=True)
    assert record["inputs"] == {"count": 6, "source": "given", "labelled": True}
    assert record["variants"]["fp32"]["passed"] and record["variants"]["fp32"]["accuracy"] == 1.0
    int8 = record["variants"]["int8"]
    assert int8["passed"] is False and "top-1 agreement" in int8["failure"]
    assert not (copy / "model.int8.onnx").exists()
    assert "speed" not in int8 and record["served"] == "fp32"  # a variant that failed is never timed nor served
    assert json.loads((copy / "metrics.json").read_text()) == {"export": json.loads(json.dumps(record))}


def test_missing_validation_photos_raise_a_clear_error(exported, tmp_path):
    run, *_ = exported
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    report = json.loads((copy / "data_report.json").read_text())
    (copy / "data_report.json").write_text(json.dumps({**report, "root": str(tmp_path / "moved")}))
    with pytest.raises(ExportError, match="15 of 15 validation photos are gone"):
        export_run(copy)


@pytest.mark.parametrize(
    "broken, message",
    [
        ("no_folder", "does not exist"),
        ("no_config", "config.json is missing"),
        ("no_weights", "no model.safetensors"),
        ("wrong_classes", "does not hold a resnet18 with 4 classes"),
    ],
)
def test_unusable_run_folders_raise_clear_errors(exported, tmp_path, broken, message):
    run, *_ = exported
    copy = tmp_path / "run"
    if broken != "no_folder":
        shutil.copytree(run, copy)
    if broken == "no_config":
        (copy / "config.json").unlink()
    if broken == "no_weights":
        (copy / "model.safetensors").unlink()
    if broken == "wrong_classes":
        config = json.loads((copy / "config.json").read_text())
        (copy / "config.json").write_text(json.dumps({**config, "labels": LABELS + ["yellow"]}))
    with pytest.raises(ExportError, match=message):
        export_run(copy)


# ---------------------------------------------------------------- speed at export, and the variant served by default


def variant(accuracy=None, images_per_s=None, passed=True) -> dict:
    record = {"passed": passed}
    if accuracy is not None:
        record["accuracy"] = accuracy
    if images_per_s is not None:
        record["speed"] = {"images_per_s": images_per_s, "batch": 8, "runs": 5, "provider": "CPUExecutionProvider"}
    return record


@pytest.mark.parametrize(
    "variants, served",
    [
        ({"fp32": variant(0.54, 62), "int8": variant(0.53, 199)}, "int8"),  # 1 point lower, 3.2x faster
        ({"fp32": variant(0.54, 62), "int8": variant(0.529, 199)}, "fp32"),  # 1.1 points lower: never the default
        ({"fp32": variant(0.54, 62), "int8": variant(0.60, 55)}, "fp32"),  # more accurate but slower
        ({"fp32": variant(0.54, 62), "int8": variant(0.54, 199, passed=False)}, "fp32"),  # failed its check
        ({"fp32": variant(0.54, 62), "fp16": variant(None, 900, passed=None)}, "fp32"),  # not checked
        ({"fp32": variant(0.54, 62), "fp16": variant(0.54, 150), "int8": variant(0.54, 199)}, "int8"),
        ({"fp32": variant(0.54, 62), "fp16": variant(0.545, 400), "int8": variant(0.535, 199)}, "fp16"),
        ({"fp32": variant(0.54, 62), "int8": variant(0.54)}, "fp32"),  # INT8 could not be timed
        ({"fp32": variant(0.54), "int8": variant(0.54, 199)}, "fp32"),  # fp32 not timed: nothing to compare with
        ({"fp32": variant(None, 62), "int8": variant(None, 199)}, "fp32"),  # unlabelled inputs: accuracy unknown
        ({"fp32": variant(0.54, 62)}, "fp32"),
    ],
)
def test_the_served_variant_is_the_fastest_that_passed_within_1_point_of_fp32(variants, served):
    assert choose_served(variants) == served


def test_export_times_every_variant_and_records_the_one_served(exported):
    run, _, _, _, record = exported
    for kind in ("fp32", "fp16", "int8"):
        speed = record["variants"][kind]["speed"]
        assert speed["images_per_s"] > 0 and speed["batch"] == 8 and 1 <= speed["runs"] <= 5
        assert speed["provider"] == "CPUExecutionProvider"
    assert record["served"] == choose_served(record["variants"])
    assert json.loads((run / "metrics.json").read_text())["export"]["served"] == record["served"]


def test_training_s_call_makes_int8_and_fp16_only_where_cuda_serves_it(exported, tmp_path, monkeypatch):
    run, model, inputs, targets, _ = exported
    record = RunConfig(TrainConfig(arch="resnet18", weights="none", image_size=64), LABELS, SPEC).to_record()
    (tmp_path / "cpu").mkdir(), (tmp_path / "gpu").mkdir()
    made = export_model(model, record, tmp_path / "cpu", inputs[:6], targets[:6], source="validation photos")
    assert set(made["variants"]) == {"fp32", "int8"}  # this machine: no CUDA provider
    assert made["served"] in ("fp32", "int8") and (tmp_path / "cpu" / "model.int8.onnx").is_file()
    monkeypatch.setattr(export, "cuda_status", lambda: (True, ""))
    made = export_model(model, record, tmp_path / "gpu", inputs[:6], targets[:6], int8=False)
    assert set(made["variants"]) == {"fp32", "fp16"} and made["variants"]["fp16"]["passed"]


def test_speed_is_measured_in_a_bounded_time_and_a_file_that_cannot_run_is_recorded(exported, tmp_path, monkeypatch):
    run, _, inputs, _, _ = exported
    monkeypatch.setattr(export, "SPEED_SECONDS", 0.0)  # the budget is spent after the first timed run
    speed = measure_speed(run / "model.onnx", inputs[:3])  # fewer inputs than a batch: repeated to fill it
    assert speed["runs"] == 1 and speed["batch"] == 8 and speed["images_per_s"] > 0
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    assert measure_speed(broken, inputs) == {
        "failure": "could not be timed: ModelLoadError: broken.onnx is not an ONNX model, or it is truncated"}
