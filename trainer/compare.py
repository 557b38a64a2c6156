"""Runs side by side: what differs in their settings, their curves, final metrics and per-class F1, and
whether they saw the same photos and split.

Built from run folders alone (config.json, metrics.json, history.json, data_report.json), so a run
trained a minute ago, one unzipped from a download and the arms of an experiment compare alike.
`trainer.compare_report` draws it; the UI, `python -m trainer compare` and the /compare API show it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from models.run_folder import APP_FOLDERS, RunFolder, RunFolderError
from trainer.config import TrainConfig, fit_command

MIN_RUNS = 2

# The final figures a comparison lists, as (key, words, which way is better: 1 higher, -1 lower, 0 neither).
METRICS = (
    ("val_accuracy", "validation accuracy", 1),
    ("val_macro_f1", "validation macro F1", 1),
    ("val_loss", "validation loss", -1),
    ("test_accuracy", "test accuracy", 1),
    ("test_macro_f1", "test macro F1", 1),
    ("best_epoch", "best epoch", 0),
    ("epochs_run", "epochs run", 0),
    ("train_seconds", "time in epochs (s)", -1),  # a linear probe's one pass for its features is not in it
)


@dataclass
class ComparedRun:
    """One run as the comparison reads it."""

    name: str  # what the comparison calls it: the experiment arm, else what sets it apart
    path: Path
    config: dict  # TrainConfig.to_dict()
    labels: list[str]
    metrics: dict  # metrics.json
    history: list[dict]  # history.json rows
    report: dict  # data_report.json ({} for runs without one)
    experiment: dict | None  # experiment.json: the series it is an arm of

    @property
    def figures(self) -> dict[str, float | int | None]:
        """The final figures of METRICS, from metrics.json and history.json."""
        val, test = self.metrics.get("val") or {}, self.metrics.get("test") or {}
        return {
            "val_accuracy": val.get("accuracy"), "val_macro_f1": val.get("macro_f1"), "val_loss": val.get("loss"),
            "test_accuracy": test.get("accuracy"), "test_macro_f1": test.get("macro_f1"),
            "best_epoch": self.metrics.get("best_epoch"), "epochs_run": self.metrics.get("epochs_run"),
            "train_seconds": round(sum(row.get("seconds", 0.0) for row in self.history), 1) if self.history else None,
        }

    def per_class_f1(self, split: str = "val") -> dict[str, float]:
        return {row["label"]: row["f1"] for row in (self.metrics.get(split) or {}).get("per_class", [])}

    def command(self) -> str:
        """The CLI command that trains this run again: its photos as the person knows them (the zip they
        uploaded, the folder they gave), PHOTOS where the app assembled the folder itself."""
        source, root = self.report.get("source") or "", Path(self.report.get("root") or "PHOTOS")
        data = source if source.endswith(".zip") else "PHOTOS" if root.name in APP_FOLDERS else str(root)
        return fit_command(TrainConfig.from_dict(self.config), data, self.path.name)


@dataclass
class Comparison:
    runs: list[ComparedRun]

    @property
    def names(self) -> list[str]:
        return [run.name for run in self.runs]

    def settings(self) -> list[dict]:
        """The settings that differ between the runs: [{"setting", "values": [one per run]}]."""
        flat = [_flat_settings(run) for run in self.runs]
        keys = list(dict.fromkeys(key for settings in flat for key in settings))
        rows = []
        for key in keys:
            values = [settings.get(key) for settings in flat]
            if any(value != values[0] for value in values):
                rows.append({"setting": key, "values": values})
        return rows

    def metrics(self) -> list[dict]:
        """Final figures side by side, each with its difference from the first run: [{"metric", "values", "deltas", "better"}]."""
        figures = [run.figures for run in self.runs]
        rows = []
        for key, words, better in METRICS:
            values = [f[key] for f in figures]
            if all(value is None for value in values):
                continue
            rows.append({"metric": words, "key": key, "values": values, "deltas": _deltas(values), "better": better})
        return rows

    def per_class_f1(self) -> list[dict]:
        """Validation F1 per class, each with its change from the first run: [{"class", "values", "deltas"}].

        Runs of different data may name different classes; a class a run lacks is None there.
        """
        f1s = [run.per_class_f1() for run in self.runs]
        classes = list(dict.fromkeys(label for run in self.runs for label in run.labels))
        return [{"class": label, "values": [f1.get(label) for f1 in f1s], "deltas": _deltas([f1.get(label) for f1 in f1s])}
                for label in classes]

    def data(self) -> dict:
        """Whether the runs saw the same photos in the same split: {"same": bool | None, "note": words}."""
        prints = [_split_print(run.report) for run in self.runs]
        if any(p is None for p in prints):
            unknown = [run.name for run, p in zip(self.runs, prints) if p is None]
            return {"same": None, "note": f"Cannot tell whether the photos were the same: {', '.join(unknown)} "
                                          "has no data report."}
        if all(p == prints[0] for p in prints):
            seeds = {run.config.get("seed") for run in self.runs}
            seed = f", seed {seeds.pop()}" if len(seeds) == 1 else ""
            return {"same": True, "note": f"Same photos and the same train/validation split in every run{seed}: "
                                          "the differences come from the settings (and chance)."}
        photos = [_photo_print(run.report) for run in self.runs]
        if all(p == photos[0] for p in photos):
            return {"same": False, "note": "Same photos, but split differently between training and validation "
                                           "(another seed or validation fraction): validation figures are not measured "
                                           "on the same photos."}
        differ = [run.name for run, p in zip(self.runs, photos) if p != photos[0]]
        return {"same": False, "note": f"Different photos: {', '.join(differ)} did not train on the photos of "
                                       f"{self.runs[0].name}. Their figures are not directly comparable."}

    def to_dict(self) -> dict:
        """Everything the comparison shows, as JSON (the /compare API and `python -m trainer compare --json`)."""
        return {
            "runs": [{"name": run.name, "id": run.path.name, "labels": run.labels, "config": run.config,
                      "experiment": run.experiment, "figures": run.figures, "command": run.command(),
                      "history": [{k: row.get(k) for k in ("epoch", "phase", "train_loss", "train_acc", "val_loss",
                                                           "val_acc", "lr", "seconds")} for row in run.history],
                      "confusion_matrix": (run.metrics.get("val") or {}).get("confusion_matrix")}
                     for run in self.runs],
            "data": self.data(),
            "settings": self.settings(),
            "metrics": self.metrics(),
            "per_class_f1": self.per_class_f1(),
        }


def compare(paths: list[str | Path]) -> Comparison:
    """Read finished run folders into a comparison; RunFolderError names a folder that cannot be compared."""
    if len(paths) < MIN_RUNS:
        raise RunFolderError(f"Compare at least {MIN_RUNS} runs (got {len(paths)})")
    runs = []
    for path in paths:
        folder = RunFolder(path)
        if not folder.has_results():
            raise RunFolderError(f"{folder.path} is not a finished run (it has no metrics yet)")
        record = folder.read_config()
        runs.append(ComparedRun("", folder.path, record.train, list(record.labels), folder.read_metrics(),
                                folder.read_history(), folder.read_data_report(), folder.read_experiment()))
    for run, name in zip(runs, _names(runs)):
        run.name = name
    return Comparison(runs)


def _names(runs: list[ComparedRun]) -> list[str]:
    """Short, distinct names: the experiment arms' own, else the values of the settings that differ."""
    comparison = Comparison(runs)
    differing = comparison.settings()
    names = []
    for index, run in enumerate(runs):
        if run.experiment and run.experiment.get("arm"):
            name = run.experiment["arm"]
        else:
            parts = [f"{row['setting']} {_short(row['values'][index])}" for row in differing[:2]]
            name = ", ".join(parts) or run.path.name
        names.append(name)
    for index, name in enumerate(names):  # two runs that differ in nothing shown: number them
        if names.count(name) > 1:
            names[index] = f"{name} #{names[:index + 1].count(name)}"
    return names


def _short(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _flat_settings(run: ComparedRun) -> dict:
    """A run's settings as one level of "name": value, the schedule's parameters spelled out; what the photos were."""
    settings = {}
    for key, value in run.config.items():
        if key == "schedule":
            for name, inner in value.items():
                if name == "params":
                    settings.update({f"param {k}": v for k, v in sorted(inner.items())})
                elif name != "steps_per_epoch":  # derived from the photos, not chosen
                    settings[name] = inner
        else:
            settings[key] = value
    settings["photos"] = run.report.get("source") or Path(run.report.get("root") or "").name or None
    settings["classes"] = len(run.labels)
    return settings


def _deltas(values: list) -> list:
    """Each value's difference from the first (None where either is missing; None for the first)."""
    first = values[0]
    return [None] + [None if value is None or first is None else value - first for value in values[1:]]


def _digest(items) -> str:
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()


def _split_print(report: dict) -> str | None:
    """The photos and which split each was in; reports written before photos_digest go by names alone."""
    files = report.get("files")
    return _digest([report.get("photos_digest"), {split: sorted(map(tuple, rows)) for split, rows in files.items()}]) \
        if files else None


def _photo_print(report: dict) -> str | None:
    files = report.get("files")
    return _digest([report.get("photos_digest"), sorted(tuple(row) for rows in files.values() for row in rows)]) \
        if files else None
