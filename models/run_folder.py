"""The run folder, owned here: its file names, the typed run record, reading, writing, merging metrics.

A run folder holds what one training left behind:

    config.json        RunRecord: labels, preprocessing (PreprocessSpec) and the training config
    metrics.json       evaluation figures; the export adds its record under "export"
    history.json       one entry per epoch (losses, accuracies, the LR at every step)
    data_report.json   what the photo intake found, kept and skipped; "files" lists each split
    predictions.json   each evaluated photo's true and predicted class
    experiment.json    for an arm of an experiment: the series, its kind, this arm's name and place
    model.safetensors  the PyTorch weights
    model.onnx         the exported model (+ model.fp16.onnx, model.int8.onnx variants)
    data/              photos extracted from an uploaded zip (left out of downloads and pushes)

Everything that reads or writes these files asks this module. It imports no torch and no trainer
code: the training config stays a dict here, and `trainer.config.RunConfig.from_dict` gives it types.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from models.atomic import write_json
from models.preprocess import PreprocessSpec

CONFIG = "config.json"
METRICS = "metrics.json"
HISTORY = "history.json"
DATA_REPORT = "data_report.json"
PREDICTIONS = "predictions.json"  # split -> [[photo path in the report, true, predicted, confidence]]
EXPERIMENT = "experiment.json"  # {"series", "kind", "arm", "index" (1-based), "of"}
WEIGHTS = "model.safetensors"
ONNX_VARIANTS = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
DATA = "data"
SPACE = "space"
# Folders the app names itself (a zip's extraction folder, the per-class upload's in ui/finetune): their
# names say nothing about the photos, so a run trained from one is known by its class names instead.
APP_FOLDERS = {DATA, "classes"}

# Serialises read-modify-write of metrics.json within the process (training and export both add to it).
_METRICS_LOCK = threading.Lock()


class RunFolderError(ValueError):
    """A run folder that is missing, unfinished or malformed; the message names the file and the fix."""


@dataclass(frozen=True)
class RunRecord:
    """What config.json holds: the class names in output order, the preprocessing, the training config."""

    labels: list[str]
    preprocessing: PreprocessSpec
    train: dict  # trainer.config.TrainConfig.to_dict(); RunConfig.from_dict turns it back into types
    trained_on: dict = field(default_factory=dict)  # how it was trained: {"processes": 2, "backend": "gloo"}

    @property
    def arch(self) -> str:
        return self.train.get("arch", "resnet18")

    def to_dict(self) -> dict:
        return {"labels": list(self.labels), "preprocessing": self.preprocessing.to_dict(), "train": self.train,
                "trained_on": self.trained_on}

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        """The record `to_dict` wrote; ValueError, KeyError or TypeError for anything else."""
        labels = d["labels"]
        if not isinstance(labels, list) or not labels or not all(isinstance(label, str) for label in labels):
            raise ValueError("labels must be a non-empty list of class names")
        train = d["train"]
        if not isinstance(train, dict):
            raise ValueError("train must be a JSON object")
        trained_on = d.get("trained_on", {})  # runs written before it was recorded lack it
        if not isinstance(trained_on, dict):
            raise ValueError("trained_on must be a JSON object")
        return cls(list(labels), PreprocessSpec.from_dict(d["preprocessing"]), train, trained_on)


class RunFolder:
    """One run folder: where each file is, and typed reads and atomic writes of them."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS

    def onnx(self, variant: str = "fp32") -> Path:
        return self.path / ONNX_VARIANTS[variant]

    @property
    def data_dir(self) -> Path:
        return self.path / DATA

    @property
    def space_dir(self) -> Path:
        return self.path / SPACE

    def has_config(self) -> bool:
        return self.file(CONFIG).is_file()

    def has_results(self) -> bool:
        """Its configuration and figures are written: enough to compare it (a pushed run may lack the weights)."""
        return self.has_config() and self.file(METRICS).is_file()

    def is_finished(self) -> bool:
        """Trained to the end (or stopped early) with its figures written."""
        return self.has_results() and self.weights.is_file()

    # -- reading

    def read_json(self, name: str, what: str):
        """A file of the folder as JSON; RunFolderError saying `what` it is when missing or unreadable."""
        path = self.file(name)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunFolderError(f"{path} is missing ({what}); is {self.path} a run folder?") from None
        except (OSError, ValueError) as exc:
            raise RunFolderError(f"{path} cannot be read: {exc}") from None

    def read_config(self) -> RunRecord:
        data = self.read_json(CONFIG, "the run's configuration")
        try:
            return RunRecord.from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise RunFolderError(
                f"{self.file(CONFIG)} is incomplete or malformed ({type(exc).__name__}: {exc})"
            ) from None

    def read_metrics(self) -> dict:
        return self.read_json(METRICS, "the run's metrics")

    def read_history(self) -> list[dict]:
        return self.read_json(HISTORY, "the per-epoch history") if self.file(HISTORY).is_file() else []

    def read_predictions(self) -> dict[str, list]:
        """Each split's predictions; empty for runs written before they were kept."""
        return self.read_json(PREDICTIONS, "the predictions") if self.file(PREDICTIONS).is_file() else {}

    def read_experiment(self) -> dict | None:
        """The experiment this run is an arm of; None for a run trained on its own."""
        return self.read_json(EXPERIMENT, "the experiment record") if self.file(EXPERIMENT).is_file() else None

    def read_data_report(self) -> dict:
        return self.read_json(DATA_REPORT, "the data report") if self.file(DATA_REPORT).is_file() else {}

    def photo_root(self, report: dict) -> Path:
        """The folder the report's photo paths are relative to.

        A zip's photos live in the run's own data/ folder; when the run folder has been moved or
        copied, the absolute root in the report is stale, and the folder's own data/ is meant.
        """
        root = Path(report["root"])
        if not root.is_dir() and self.data_dir.is_dir() and root.name == DATA:
            return self.data_dir
        return root

    # -- writing

    def create(self) -> "RunFolder":
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def write_config(self, record: RunRecord) -> None:
        write_json(self.file(CONFIG), record.to_dict())

    def write_metrics(self, metrics: dict) -> None:
        with _METRICS_LOCK:
            write_json(self.file(METRICS), metrics)

    def merge_metrics(self, **parts) -> dict:
        """Add or replace top-level entries of metrics.json (other entries are kept); returns the result."""
        with _METRICS_LOCK:
            metrics = self.read_metrics() if self.file(METRICS).is_file() else {}
            metrics.update(parts)
            write_json(self.file(METRICS), metrics)
        return metrics

    def write_history(self, history: list[dict]) -> None:
        write_json(self.file(HISTORY), history)

    def write_predictions(self, predictions: dict[str, list]) -> None:
        write_json(self.file(PREDICTIONS), predictions)

    def write_experiment(self, record: dict) -> None:
        write_json(self.file(EXPERIMENT), record)

    def write_data_report(self, report: dict) -> None:
        write_json(self.file(DATA_REPORT), report)

    # -- describing

    def data_name(self) -> str:
        """The photos as the person named them: the zip's or folder's name, else their first class names.

        A zip checked in the Fine-tune tab is extracted into an upload folder laid out like a run folder
        (its data/ beside the report naming the zip), and the run is trained from that data/: the upload's
        report names the zip.
        """
        report = self.read_data_report()
        root = Path(report.get("root") or "")
        names = [report.get("source"), root.name]
        if root.name == DATA and root.parent != self.path:
            try:
                names.append(RunFolder(root.parent).read_data_report().get("source"))
            except RunFolderError:  # a name is not worth failing the run's listing for
                pass
        for name in names:
            name = (name or "").removesuffix(".zip")
            if name and name not in APP_FOLDERS:
                return name
        labels = self.read_config().labels
        return ", ".join(labels[:3]) + (f" +{len(labels) - 3}" if len(labels) > 3 else "")

    def ending(self) -> str | None:
        """How the training ended: None when every epoch ran, else metrics.json's "stopped" ("early-stopping",
        "time limit", "cancelled"), or "unfinished" while it has no metrics (training, or interrupted)."""
        if not self.file(METRICS).is_file():
            return "unfinished"
        return self.read_metrics().get("stopped")

    def summary(self) -> str:
        """What the run is, for pickers: "food4 · resnet18 finetune · val 87%" (photos, backbone and strategy, accuracy);
        an experiment's arm says its choice after the photos: "food4 · StepLR · resnet18 full · val 80%"."""
        record = self.read_config()
        parts = [self.data_name(), f"{record.arch} {record.train.get('strategy', '')}".strip()]
        experiment = self.read_experiment()
        if experiment and experiment.get("arm"):  # arms of a series share the rest; their choice tells them apart
            parts.insert(1, str(experiment["arm"]))
        accuracy = (self.read_metrics().get("val") or {}).get("accuracy") if self.file(METRICS).is_file() else None
        if accuracy is not None:
            parts.append(f"val {accuracy:.0%}")
        return " · ".join(parts)

    def shared_files(self) -> list[Path]:
        """The files a download or a push carries: everything but extracted photos and hidden temporaries."""
        return [
            path
            for path in sorted(self.path.rglob("*"))
            if path.is_file()
            and path.relative_to(self.path).parts[0] not in (DATA, SPACE)
            and not path.name.startswith(".")
            and not path.name.endswith(".zip")
        ]


def publish_run(unfinished: str | Path, out: str | Path) -> RunFolder:
    """Move a run written in `unfinished` to `out`, replacing what is there, in (almost) one rename.

    A zip's photos travel with it: the data report's root is made to point at their new place.
    """
    unfinished, out = Path(unfinished).resolve(), Path(out)
    folder = RunFolder(unfinished)
    report = folder.read_data_report()
    root = Path(report.get("root") or "")
    if root.is_relative_to(unfinished):
        folder.write_data_report({**report, "root": str(out.resolve() / root.relative_to(unfinished))})
    if out.exists():
        replaced = out.parent / f".{out.name}.replaced"
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(out, replaced)
        os.replace(unfinished, out)
        shutil.rmtree(replaced, ignore_errors=True)
    else:
        os.replace(unfinished, out)
    return RunFolder(out)
