"""fit(), lr_find() and the `trainer fit` / `trainer lr-find` CLI on small real photo folders."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torchvision.models import resnet18

from conftest import run_main, tiny_config, write_photos, zip_folder
from models.backbones import WeightsUnavailable, create_model, imagenet_cache_path, preprocessing_for
from models.preprocess import load_rgb
from models.run_folder import RunFolder
from trainer.__main__ import main
from trainer.config import ConfigError, RunConfig, ScheduleConfig
from trainer.lr_finder import lr_find, valley
from trainer.train import fit

CHANCE = 1 / 3


@pytest.mark.parametrize(
    "strategy,extra",
    [
        ("linear-probe", {"epochs": 4}),
        ("finetune", {"epochs": 3, "head_epochs": 1}),
        ("full", {"epochs": 3, "augment": "flip-crop", "class_weighted": True, "label_smoothing": 0.1}),
    ],
)
def test_each_strategy_trains_a_model_that_beats_chance(photos, tmp_path, strategy, extra):
    result = fit(photos, tiny_config(strategy=strategy, **extra), tmp_path / "run", export=False)
    assert result.metrics["val"]["accuracy"] > CHANCE
    assert [h.epoch for h in result.history] == list(range(1, len(result.history) + 1))
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "metrics.json", "history.json", "data_report.json", "predictions.json",
            "model.safetensors"} <= files
    kept = RunFolder(tmp_path / "run").read_predictions()  # what reopening the run shows as its mistakes
    assert [p[0] for p in kept["val"]] == [p[0] for p in result.predictions["val"]]


def test_finetune_freezes_the_backbone_for_head_epochs_then_uses_the_head_lr_multiplier(photos, tmp_path):
    config = tiny_config(strategy="finetune", epochs=3, head_epochs=2, head_lr_mult=10.0, lr=1e-3,
                         schedule=ScheduleConfig(scheduler="ConstantLR", lr=1e-3, epochs=3, params={"factor": 1.0}))
    result = fit(photos, config, tmp_path / "run", export=False)
    assert [h.phase for h in result.history] == ["head", "head", "all"]
    assert all(lr == pytest.approx(1e-2) for h in result.history for lr in h.lr)  # the head's LR: 10 x 1e-3


def test_linear_probe_caches_features_once_and_keeps_the_backbone(photos, tmp_path):
    messages = []
    result = fit(photos, tiny_config(strategy="linear-probe", epochs=3), tmp_path / "run", log=messages.append, export=False)
    assert sum("features once" in m for m in messages) == 2  # train and val, each computed once for all epochs
    torch.manual_seed(0)
    untouched = create_model("resnet18", 3, "none").state_dict()
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert torch.equal(saved["layer1.0.conv1.weight"], untouched["layer1.0.conv1.weight"])
    assert result.metrics["val"]["accuracy"] > CHANCE


def test_partial_trains_layer4_and_the_head_on_layer3_activations_computed_once(photos, tmp_path):
    messages = []
    config = tiny_config(strategy="partial", epochs=2, augment="none")
    result = fit(photos, config, tmp_path / "run", log=messages.append, export=False)
    assert sum("layer3 activations once" in m for m in messages) == 2  # train and val
    assert [h.phase for h in result.history] == ["layer4+head", "layer4+head"]
    torch.manual_seed(0)
    untouched = create_model("resnet18", 3, "none").state_dict()
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    frozen = [k for k in untouched if not k.startswith(("layer4.", "fc."))]
    assert all(torch.equal(saved[k], untouched[k]) for k in frozen)  # running statistics included
    assert not torch.equal(saved["layer4.0.conv1.weight"], untouched["layer4.0.conv1.weight"])
    assert not torch.equal(saved["fc.weight"], untouched["fc.weight"])


def test_partial_with_cached_activations_predicts_what_it_predicts_without_the_cache(photos, tmp_path, monkeypatch):
    config = tiny_config(strategy="partial", epochs=2, augment="none")
    cached = fit(photos, config, tmp_path / "cached", export=False)
    messages = []
    monkeypatch.setattr("trainer.task.MAX_CACHED_BYTES", 0)  # too many photos to cache: layer1-3 run every step
    uncached = fit(photos, config, tmp_path / "uncached", log=messages.append, export=False)
    assert any(m.startswith("the stem through layer3 runs at every step") for m in messages)
    ours, theirs = cached.predictions["val"], uncached.predictions["val"]
    assert [p[:3] for p in ours] == [p[:3] for p in theirs]
    np.testing.assert_allclose([p[3] for p in ours], [p[3] for p in theirs], atol=1e-4)


def test_auto_precision_is_bfloat16_on_a_cpu_that_computes_it_and_the_run_records_it(photos, tmp_path, monkeypatch):
    monkeypatch.setattr("trainer.step.cpu_has_native_bf16", lambda: True)
    result = fit(photos, tiny_config(strategy="full", epochs=2, lr=1e-3), tmp_path / "bf16")
    record = RunFolder(tmp_path / "bf16").read_config()
    assert record.trained_on == {"processes": 1, "device": "cpu", "precision": "bfloat16"}
    assert result.metrics["val"]["accuracy"] > CHANCE
    assert result.metrics["export"]["variants"]["fp32"]["passed"]  # the model itself stays float32
    fit(photos, tiny_config(strategy="full", epochs=1, precision="fp32"), tmp_path / "fp32", export=False)
    assert RunFolder(tmp_path / "fp32").read_config().trained_on["precision"] == "float32"


def test_the_lr_actually_used_follows_the_schedule(photos, tmp_path):
    schedule = ScheduleConfig(scheduler="StepLR", lr=1e-3, epochs=3, params={"step_size": 1, "gamma": 0.5})
    result = fit(photos, tiny_config(schedule=schedule), tmp_path / "run", export=False)
    assert [h.lr[0] for h in result.history] == pytest.approx([1e-3, 5e-4, 2.5e-4])


def test_stopping_mid_run_keeps_the_best_model_so_far(photos, tmp_path):
    batches = []

    def stop_in_third_epoch():
        return bool(batches) and len(batches) >= 2 * batches[0].batches + 1  # one batch into epoch 3

    result = fit(photos, tiny_config(epochs=6), tmp_path / "run", on_batch=batches.append,
                 should_stop=stop_in_third_epoch, export=False)
    assert result.stopped == "cancelled"
    assert len(result.history) == 2
    best = max(result.history, key=lambda h: (h.val_acc, -h.val_loss))
    assert result.metrics["best_epoch"] == best.epoch
    assert result.metrics["val"]["accuracy"] == pytest.approx(best.val_acc)
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_early_stopping_ends_the_run_after_patience_epochs_without_improvement(photos, tmp_path):
    result = fit(photos, tiny_config(epochs=12, patience=2), tmp_path / "run", export=False)
    assert result.stopped == "early-stopping"
    assert len(result.history) == result.metrics["best_epoch"] + 2


def test_saved_run_reloads_and_reproduces_its_validation_accuracy(photos, tmp_path):
    result = fit(photos, tiny_config(epochs=3), tmp_path / "run", export=False)
    run = RunConfig.from_dict(json.loads((tmp_path / "run" / "config.json").read_text()))
    spec = run.preprocessing
    assert spec == preprocessing_for("resnet18", 32) and run.train == tiny_config(epochs=3)
    model = create_model(run.train.arch, len(run.labels), "none")
    model.load_state_dict(load_file(str(tmp_path / "run" / "model.safetensors")))
    model.eval()
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    root = Path(report["root"])
    inputs = np.stack([spec.to_array(load_rgb(root / rel)) for rel, _ in report["files"]["val"]])
    targets = [run.labels.index(label) for _, label in report["files"]["val"]]
    with torch.no_grad():
        predicted = model(torch.from_numpy(inputs)).argmax(1).tolist()
    accuracy = np.mean([p == t for p, t in zip(predicted, targets)])
    assert accuracy == pytest.approx(result.metrics["val"]["accuracy"])


def test_training_is_repeatable_with_the_same_seed(photos, tmp_path):
    first = fit(photos, tiny_config(epochs=2, augment="trivialaugment"), tmp_path / "a", export=False)
    second = fit(photos, tiny_config(epochs=2, augment="trivialaugment"), tmp_path / "b", export=False)
    assert [h.train_loss for h in first.history] == [h.train_loss for h in second.history]


def test_test_split_is_evaluated_once_and_reported_apart(tmp_path):
    write_photos(tmp_path / "data" / "train", per_class=10)
    write_photos(tmp_path / "data" / "val", per_class=3, seed=1)
    write_photos(tmp_path / "data" / "test", per_class=4, seed=2)
    result = fit(tmp_path / "data", tiny_config(epochs=2), tmp_path / "run", export=False)
    assert result.metrics["val"]["count"] == 9 and result.metrics["test"]["count"] == 12
    assert len(result.metrics["test"]["confusion_matrix"]) == 3
    assert "never used for selection" in result.metrics["note"]


def test_a_zip_is_extracted_inside_the_run_folder(photos, tmp_path):
    archive = zip_folder(photos, tmp_path / "photos.zip")
    result = fit(archive, tiny_config(epochs=1), tmp_path / "run", export=False)
    assert Path(json.loads((tmp_path / "run" / "data_report.json").read_text())["root"]).is_relative_to(tmp_path / "run")
    assert result.labels == ["blue", "green", "red"]


def test_a_non_empty_out_folder_is_refused_unless_overwrite(photos, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(ConfigError, match="not empty"):
        fit(photos, tiny_config(epochs=1), out, export=False)
    assert (out / "keep.txt").read_text() == "precious"
    fit(photos, tiny_config(epochs=1), out, overwrite=True, export=False)
    assert not (out / "keep.txt").exists()


def test_a_finished_training_exports_onnx_from_memory_with_a_parity_check(photos, tmp_path, monkeypatch):
    import models.export

    def from_disk(*args, **kwargs):
        raise AssertionError("fit exports the model it holds, without reading the run folder back")

    monkeypatch.setattr(models.export, "export_run", from_disk)
    result = fit(photos, tiny_config(epochs=1), tmp_path / "run")
    assert (tmp_path / "run" / "model.onnx").is_file()
    fp32 = result.metrics["export"]["variants"]["fp32"]
    assert fp32["passed"] and fp32["max_abs_logit_diff"] < 1e-4
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["export"]["variants"]["fp32"]["passed"]


def test_imagenet_weights_load_from_a_seeded_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    reference = resnet18(weights=None).state_dict()
    cache = imagenet_cache_path("resnet18")
    assert cache.is_relative_to(tmp_path / "torch" / "hub" / "checkpoints")
    cache.parent.mkdir(parents=True)
    torch.save(reference, cache)
    model = create_model("resnet18", 5, "imagenet")
    assert torch.equal(model.state_dict()["layer4.1.bn2.weight"], reference["layer4.1.bn2.weight"])
    assert model.fc.out_features == 5


def test_imagenet_weights_unavailable_say_how_to_fix_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    # A proxy on a closed loopback port makes the download fail at once, online or not.
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    with pytest.raises(WeightsUnavailable) as info:
        create_model("resnet34", 3, "imagenet")
    message = str(info.value)
    assert str(imagenet_cache_path("resnet34")) in message and "--weights PATH" in message and "--weights none" in message


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_local_weights_file_is_loaded_safely(tmp_path, suffix):
    reference = resnet18(weights=None).state_dict()
    path = tmp_path / f"weights{suffix}"
    save_file(reference, str(path)) if suffix == ".safetensors" else torch.save({"state_dict": reference}, path)
    model = create_model("resnet18", 2, path)
    assert torch.equal(model.state_dict()["conv1.weight"], reference["conv1.weight"])


def test_a_weights_file_for_another_arch_is_refused(tmp_path):
    path = tmp_path / "r18.safetensors"
    save_file(resnet18(weights=None).state_dict(), str(path))
    with pytest.raises(WeightsUnavailable, match="does not fit resnet50"):
        create_model("resnet50", 2, path)


def test_lr_finder_sweeps_exponentially_and_suggests_an_lr_inside_the_sweep(photos):
    result = lr_find(photos, tiny_config(strategy="linear-probe"), iterations=40, start_lr=1e-6, end_lr=1.0)
    assert result.lr[0] == pytest.approx(1e-6)
    ratios = np.diff(np.log(result.lr))
    assert np.allclose(ratios, ratios[0])
    assert result.lr[0] <= result.suggested_lr <= result.lr[-1]
    assert "valley" in result.rule
    assert set(result.to_dict()) == {"lr", "loss", "suggested_lr", "rule", "clear"}


def test_lr_finder_stops_when_the_loss_diverges(photos):
    result = lr_find(photos, tiny_config(strategy="full", optimizer="sgd"), iterations=60, start_lr=1e-4, end_lr=1e4)
    assert len(result.lr) < 60


def test_valley_rule_picks_a_point_on_the_longest_descent():
    lrs = [10 ** (i / 10 - 6) for i in range(40)]
    losses = [2.0] * 10 + [2.0 - 0.1 * i for i in range(15)] + [0.6 + 0.5 * i for i in range(15)]
    assert lrs[10] < valley(lrs, losses) < lrs[25]


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "trainer", *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def in_process(*args):
    return run_main(main, *args)


def test_cli_fit_prints_the_data_summary_and_writes_the_run(photos, tmp_path):
    done = cli("fit", str(photos), "--out", str(tmp_path / "run"), "--weights", "none", "--image-size", "32",
               "--epochs", "2", "--optimizer", "adamw", "--lr", "0.001", "--batch-size", "8", "--augment", "none")
    assert done.returncode == 0, done.stderr
    assert "blue" in done.stdout.split("epoch")[0]  # the data report summary comes first
    assert "val accuracy" in done.stdout
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["optimizer"] == "adamw"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--weights", "none", "--scheduler", "StepLR", "--param", "step_size=0"], "step_size must be at least 1"),
        (["--weights", "none", "--val-fraction", "1.5"], "val_fraction must be between 0 and 1"),
        (["--weights", "none", "--image-size", "5000"], "image_size must be at most 1024"),
        (["--weights", "/no/such/file.pth"], "does not exist"),
    ],
)
def test_cli_fit_bad_input_exits_non_zero_with_one_line(photos, tmp_path, args, message):
    done = in_process("fit", str(photos), "--out", str(tmp_path / "run"), "--image-size", "32", "--epochs", "1", *args)
    assert done.returncode != 0
    assert message in done.stderr and done.stderr.strip().count("\n") == 0


def test_cli_fit_on_a_folder_with_one_class_says_so(tmp_path):
    write_photos(tmp_path / "one", classes=("red",))
    done = in_process("fit", str(tmp_path / "one"), "--out", str(tmp_path / "run"), "--weights", "none")
    assert done.returncode != 0 and "at least 2 classes" in done.stderr


def test_cli_lr_find_prints_json(photos):
    done = in_process("lr-find", str(photos), "--weights", "none", "--image-size", "32", "--strategy", "linear-probe",
               "--iterations", "20", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert len(out["lr"]) == len(out["loss"]) and out["suggested_lr"] > 0 and out["rule"]
