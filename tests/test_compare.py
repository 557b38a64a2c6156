"""Experiments and comparisons: every kind trains its arms on one split and seed, a comparison's numbers are
each run's own, runs of other photos are flagged, a series cancels as a whole, the report draws in Chromium."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_config, write_photos
from models.run_folder import RunFolder
from trainer.__main__ import config_from_args, get_args_parser, main
from trainer.compare import compare
from trainer.compare_report import f1_frame, html_report, metrics_frame, settings_frame
from trainer.config import ScheduleConfig, TrainConfig, fit_command
from trainer.experiment import ArmDone, ArmStarts, SeriesPlanned, arms_for, estimate, run_experiment
from trainer.train import BatchEvent, fit

ROOT = Path(__file__).resolve().parent.parent


def _run(photos: Path, out: Path, kind: str, config: TrainConfig, **kwargs):
    events = []
    done = run_experiment(photos, kind, config, lambda index, arm: out / f"arm{index}", emit=events.append, **kwargs)
    return done, events


def _weights_file(path: Path) -> Path:
    """A local weights file standing in for ImageNet's (no network here)."""
    import torch
    from torchvision.models import resnet18

    torch.manual_seed(1)
    torch.save(resnet18(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photos(tmp_path_factory.mktemp("photos") / "food", per_class=8)


@pytest.fixture(scope="module")
def schedules(photos, tmp_path_factory):
    """The four-schedule experiment, trained once for the tests that read it."""
    out = tmp_path_factory.mktemp("schedules")
    done, events = _run(photos, out, "schedules", tiny_config(epochs=2, seed=3))
    return done, events


KIND_DIFFERENCES = {  # what each kind changes between its arms, and nothing else
    "strategies": {"strategy"},
    "pretrained": {"weights"},
    "head-lr": {"head_lr_mult"},
}


def _differing(done) -> set[str]:
    configs = [RunFolder(path).read_config().train for path in done.run_dirs]
    flat = [{**{k: v for k, v in c.items() if k != "schedule"}, **c["schedule"]} for c in configs]
    return {key for key in flat[0] if any(f[key] != flat[0][key] for f in flat)}


def _same_split_and_seed(done) -> None:
    reports = [RunFolder(path).read_data_report()["files"] for path in done.run_dirs]
    assert all(report == reports[0] for report in reports)
    assert len({RunFolder(path).read_config().train["seed"] for path in done.run_dirs}) == 1
    series = {RunFolder(path).read_experiment()["series"] for path in done.run_dirs}
    assert len(series) == 1


def test_the_schedules_experiment_trains_four_arms_on_one_split_and_seed(schedules):
    done, events = schedules
    assert done.stopped is None and not done.failed
    assert [RunFolder(p).read_experiment()["arm"] for p in done.run_dirs] == [
        "StepLR", "CosineAnnealingLR", "ReduceLROnPlateau", "ExponentialLR"]
    assert all(RunFolder(p).is_finished() and RunFolder(p).onnx().is_file() for p in done.run_dirs)
    _same_split_and_seed(done)
    assert _differing(done) == {"scheduler"}
    planned = [e for e in events if isinstance(e, SeriesPlanned)]
    assert len(planned) == 1 and planned[0].seconds > 0 and planned[0].train + planned[0].val == 24
    assert [(e.index, e.of) for e in events if isinstance(e, ArmStarts)] == [(1, 4), (2, 4), (3, 4), (4, 4)]


@pytest.mark.parametrize("kind", KIND_DIFFERENCES)
def test_each_other_kind_changes_only_its_own_setting(kind, photos, tmp_path):
    config = tiny_config(epochs=1, head_epochs=0)
    if kind == "pretrained":  # a local weights file stands in for ImageNet
        config.weights = str(_weights_file(tmp_path / "pretrained.pth"))
    done, _ = _run(photos, tmp_path / "runs", kind, config, export=False)
    assert len(done.run_dirs) == len(arms_for(kind, config)) and done.stopped is None
    _same_split_and_seed(done)
    assert _differing(done) == KIND_DIFFERENCES[kind]
    if kind == "pretrained":
        assert [RunFolder(p).read_config().train["weights"] for p in done.run_dirs] == [config.weights, "none"]


def test_the_pretrained_kind_says_before_training_when_imagenet_weights_cannot_be_loaded(photos, tmp_path, monkeypatch):
    from models.backbones import WeightsUnavailable

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = []
    with pytest.raises(WeightsUnavailable):
        run_experiment(photos, "pretrained", tiny_config(weights="imagenet"), lambda i, arm: tmp_path / f"arm{i}",
                       emit=started.append)
    assert not started and not list(tmp_path.glob("arm*"))


def test_a_comparison_s_numbers_are_each_run_s_own_metrics(schedules):
    done, _ = schedules
    comparison = compare(done.run_dirs)
    metrics = [RunFolder(p).read_metrics() for p in done.run_dirs]
    rows = {row["key"]: row for row in comparison.metrics()}
    assert rows["val_accuracy"]["values"] == [m["val"]["accuracy"] for m in metrics]
    assert rows["val_loss"]["values"] == [m["val"]["loss"] for m in metrics]
    assert rows["val_macro_f1"]["values"] == [m["val"]["macro_f1"] for m in metrics]
    assert rows["best_epoch"]["values"] == [m["best_epoch"] for m in metrics]
    first = metrics[0]["val"]["accuracy"]
    assert rows["val_accuracy"]["deltas"] == [None] + [m["val"]["accuracy"] - first for m in metrics[1:]]
    for row in comparison.per_class_f1():
        assert row["values"] == [next(c["f1"] for c in m["val"]["per_class"] if c["label"] == row["class"])
                                 for m in metrics]
    assert [row["setting"] for row in comparison.settings()] == ["scheduler"]
    assert comparison.data()["same"] is True
    assert comparison.names == ["StepLR", "CosineAnnealingLR", "ReduceLROnPlateau", "ExponentialLR"]
    as_json = json.loads(json.dumps(comparison.to_dict()))
    assert [run["figures"]["val_accuracy"] for run in as_json["runs"]] == rows["val_accuracy"]["values"]
    assert [len(run["history"]) for run in as_json["runs"]] == [2, 2, 2, 2]
    # The page's tables say the same: the first run's accuracy as a percentage, the others with their difference.
    table = metrics_frame(comparison).set_index("metric")
    assert table.loc["validation accuracy", "StepLR"] == f"{first:.1%}"
    delta = (metrics[1]["val"]["accuracy"] - first) * 100
    assert table.loc["validation accuracy", "CosineAnnealingLR"].endswith(f"({delta:+.1f} pt)")
    assert list(settings_frame(comparison).columns) == ["setting", *comparison.names]
    assert len(f1_frame(comparison)) == 3


def test_runs_of_other_photos_or_another_split_are_flagged(photos, tmp_path):
    config = tiny_config(epochs=1)
    same = fit(photos, config, tmp_path / "a", export=False).run_dir
    other_split = fit(photos, tiny_config(epochs=1, seed=5), tmp_path / "b", export=False).run_dir
    other_photos = fit(write_photos(tmp_path / "other", per_class=8, seed=9), config, tmp_path / "c", export=False).run_dir
    split = compare([same, other_split]).data()
    assert split["same"] is False and split["note"].startswith("Same photos, but split differently")
    photos_differ = compare([same, other_photos]).data()
    assert photos_differ["same"] is False and photos_differ["note"].startswith("Different photos: ")
    assert compare([same, other_split]).names == ["seed 0", "seed 5"]


def test_a_series_cancelled_between_arms_keeps_the_finished_ones(photos, tmp_path):
    stop = []

    def emit(event):
        if isinstance(event, ArmDone):
            stop.append(True)

    done = run_experiment(photos, "head-lr", tiny_config(epochs=1), lambda i, arm: tmp_path / f"arm{i}", emit=emit,
                          should_stop=lambda: bool(stop), export=False)
    assert done.stopped == "cancelled" and done.run_dirs == [tmp_path / "arm1"]
    assert RunFolder(tmp_path / "arm1").is_finished() and not (tmp_path / "arm2").exists()


def test_a_series_cancelled_inside_an_arm_keeps_the_arms_before_it(photos, tmp_path):
    seen = []

    def emit(event):
        seen.append(event)

    def stop() -> bool:  # asked after the second arm's first batch
        starts = [e for e in seen if isinstance(e, ArmStarts)]
        return len(starts) == 2 and isinstance(seen[-1], BatchEvent)

    done = run_experiment(photos, "strategies", tiny_config(epochs=2), lambda i, arm: tmp_path / f"arm{i}", emit=emit,
                          should_stop=stop, export=False)
    assert done.stopped == "cancelled" and done.run_dirs == [tmp_path / "arm1"]
    assert RunFolder(tmp_path / "arm2").ending() == "cancelled"  # kept as a cancelled run, left out of the comparison
    assert not (tmp_path / "arm3").exists()


def test_the_fit_command_of_a_run_trains_the_same_config():
    config = TrainConfig(arch="resnet34", strategy="finetune", nesterov=True, label_smoothing=0.1, seed=7,
                         schedule=ScheduleConfig(scheduler="LambdaLR", lr=0.003, epochs=12, warmup_epochs=1,
                                                 params={"lr_lambda": "0.95 ** epoch"}))
    command = fit_command(config, "/photos/my food", "again")
    words = shlex.split(command)
    assert words[:7] == ["python", "-m", "trainer", "fit", "/photos/my food", "--out", "again"]
    args = get_args_parser().parse_args(words[3:])
    assert config_from_args(args, TrainConfig) == config
    milestones = TrainConfig(schedule=ScheduleConfig(scheduler="MultiStepLR", params={"milestones": [3, 6], "gamma": 0.5}))
    args = get_args_parser().parse_args(shlex.split(fit_command(milestones, "d", "o"))[3:])
    assert config_from_args(args, TrainConfig) == milestones


def test_the_estimate_grows_with_what_is_trained():
    base = tiny_config(epochs=4)
    probe, full = arms_for("strategies", base)[0], arms_for("strategies", base)[2]
    assert 0 < estimate([probe], 100, 20) < estimate([full], 100, 20) < estimate([full], 200, 40)


def test_compare_and_experiment_from_the_command_line(photos, tmp_path, capsys):
    assert main(["experiment", str(photos), "--kind", "head-lr", "--out", str(tmp_path / "exp"), "--weights", "none",
                 "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--augment", "none"]) == 0
    printed = capsys.readouterr().out
    assert "head LR x1" in printed and "validation accuracy" in printed
    arms = sorted(str(p) for p in (tmp_path / "exp").glob("*-head-lr-*"))
    assert len(arms) == 2 and (tmp_path / "exp" / "report.html").is_file()
    # In a fresh process, as a user runs it.
    answer = subprocess.run([sys.executable, "-m", "trainer", "compare", *arms, "--json", "--html",
                             str(tmp_path / "report.html")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert answer.returncode == 0, answer.stderr
    as_json = json.loads(answer.stdout.splitlines()[0])
    assert [run["name"] for run in as_json["runs"]] == ["head LR x1", "head LR x10"]
    assert as_json["settings"] == [{"setting": "head_lr_mult", "values": [1.0, 10.0]}]
    assert (tmp_path / "report.html").stat().st_size > 1_000_000  # plotly.js is inside: it opens offline
    from models.run_store import RunStore

    archive = RunStore(tmp_path).zip_run(Path(arms[1]))  # a run as the app's download saves it
    assert main(["compare", arms[0], str(archive), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["metrics"] == as_json["metrics"]
    assert main(["compare", arms[0]]) == 2
    assert capsys.readouterr().err.strip() == "error: Compare at least 2 runs (got 1)"


def test_the_html_report_draws_every_figure_in_chromium(schedules, tmp_path):
    from test_browser import CHROMIUM, CHROMIUM_ARGS, _missing

    if _missing():
        pytest.skip(_missing())
    from playwright.sync_api import sync_playwright

    done, _ = schedules
    comparison = compare(done.run_dirs)
    report = tmp_path / "report.html"
    report.write_text(html_report(comparison), encoding="utf-8")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(report.as_uri())
        page.wait_for_selector("#figure-confusion .heatmaplayer image")
        drawn = page.evaluate("""() => Object.fromEntries(['loss', 'accuracy', 'lr', 'confusion'].map(name => {
            const figure = document.getElementById('figure-' + name);
            const lines = [...figure.querySelectorAll('.scatterlayer .trace path.js-line')]
                .filter(path => (path.getAttribute('d') || '').length > 10);
            return [name, {lines: lines.length, heatmaps: figure.querySelectorAll('.heatmaplayer image').length,
                           legend: [...figure.querySelectorAll('.legendtext')].map(t => t.textContent)}];
        }))""")
        tables = page.locator("table").count()
        heading = page.locator("h1").inner_text()
        page.screenshot(path=str(ROOT / "test-output" / "comparison-report.png"), full_page=True)
        browser.close()
    assert drawn["loss"]["lines"] == 8 and drawn["accuracy"]["lines"] == 8  # training and validation, four runs
    assert drawn["lr"]["lines"] == 4 and drawn["lr"]["legend"] == comparison.names
    assert drawn["confusion"]["heatmaps"] == 4
    assert tables == 3  # metrics, settings that differ, F1 per class
    assert heading == "Transfer Studio: StepLR vs CosineAnnealingLR vs ReduceLROnPlateau vs ExponentialLR"
