"""Serving many callers: a model reference resolved to its .onnx file, one shared classifier per file.

A reference is a run id from the store, "imagenet" (torchvision's ResNet-18, exported once on first
use), `hf://user/name`, or, for a person on their own machine, an .onnx path or a run folder. A run
serves its default variant (models.runtime.run_variants) or the one the caller picks; every answer
says which.
Loaded classifiers are kept for the most recently used files only (TRANSFER_STUDIO_MAX_MODELS), and
a model whose first photo takes too long is refused (TRANSFER_STUDIO_MODEL_WARMUP_SECONDS).
Messages name a model file by its base name, never by its path on the server.
No torch here: only the one-time ImageNet export imports it.
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from models.job_slot import SlotAbandoned, job_slot
from models.run_store import RunStore
from models.runtime import ModelChoice, ModelLoadError, OnnxClassifier, choose_run_variant, resolve_model_choice

IMAGENET = "imagenet"  # the reference of the default ImageNet classifier
IMAGENET_ARCH = "resnet18"

# A loaded ResNet-18 costs about 50 MB of memory, a ResNet-50 about 200 MB: 8 of them fit a 16 GB Space.
MAX_MODELS_ENV, DEFAULT_MAX_MODELS = "TRANSFER_STUDIO_MAX_MODELS", 8
# A ResNet-50 classifies its first photo in well under a second on two CPU cores, lazy set-up included.
WARMUP_ENV, DEFAULT_WARMUP_S = "TRANSFER_STUDIO_MODEL_WARMUP_SECONDS", 10.0


def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):  # not glibc (macOS, musl, Windows)
        return None


_MALLOC_TRIM = _malloc_trim()


def _give_back_freed_memory() -> None:
    """Return the memory of dropped models to the system: glibc keeps freed heap pages for reuse otherwise, and
    a server that has loaded many models grows well past what its few kept models need."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@dataclass(frozen=True)
class Classified:
    """What classify() answers: per-photo results in order, and which model served them, where, how fast."""

    results: list[dict]  # {"path", "predictions": [{"label", "score"}]} or {"path", "error"}
    provider: str
    latency_ms: float
    variant: str | None  # the run's variant that served ("fp32", "int8"...); None for a single model file
    default: str | None  # the run's default variant


def _positive_from_env(name: str, default, kind):
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not 0 < value < math.inf:
        raise ValueError(f"{name}={raw!r} must be a positive number")
    return value


class ModelServer:
    """Resolves model references against a run store and keeps the classifiers of recently used model files."""

    def __init__(self, store: RunStore, max_models: int | None = None, warmup_limit_s: float | None = None):
        self.store = store
        self.max_models = max_models or _positive_from_env(MAX_MODELS_ENV, DEFAULT_MAX_MODELS, int)
        self.warmup_limit_s = warmup_limit_s or _positive_from_env(WARMUP_ENV, DEFAULT_WARMUP_S, float)
        # (path, mtime, size) -> the classifier, being loaded or loaded; least recently used first.
        self._models: OrderedDict[tuple[str, int, int], Future] = OrderedDict()
        self._lock = threading.Lock()  # guards _models only: never held while a model loads or runs

    @property
    def imagenet_path(self) -> Path:
        """Where imagenet_model() keeps the exported ImageNet classifier."""
        return self.store.root / f"imagenet-{IMAGENET_ARCH}.onnx"

    def imagenet_model(self) -> Path:
        """The torchvision ImageNet ResNet-18 exported once to ONNX, so classifying works before any training."""
        path = self.imagenet_path
        if path.is_file():
            return path
        try:
            # An export beside a training crashes one of them. The app exports this model at start, so
            # this waits only where that failed (offline), and then not behind a whole training.
            with job_slot(should_stop=lambda: True):
                if not path.is_file():
                    from models.backbones import create_imagenet_classifier, preprocessing_for
                    from models.export import export_onnx

                    model, labels = create_imagenet_classifier(IMAGENET_ARCH)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    export_onnx(model, labels, preprocessing_for(IMAGENET_ARCH),
                                {"source": "torchvision ImageNet weights"}, path)
        except SlotAbandoned:
            raise ModelLoadError("The ImageNet model is being prepared while a training runs on this server; "
                                 "try again when it has finished") from None
        return path

    def choose_model(self, ref: str, local_paths: bool, variant: str | None = None) -> ModelChoice:
        """The .onnx file a reference names and, for a run, which variant: `variant`, else the run's default.

        Paths only when `local_paths` (the caller is on this machine)."""
        ref = (ref or "").strip()
        if not ref:
            raise ModelLoadError("Choose a model: train one in the Fine-tune tab, upload an .onnx file, or pick ImageNet")
        named = ref == IMAGENET or ref.startswith("hf://")
        try:
            run = None if named else self.store.find(ref)
        except ValueError:  # not a run id of this store
            run = None
        if run is not None:
            return choose_run_variant(run, variant, name=f"Run {ref}")
        if not named:
            if not local_paths:
                raise ModelLoadError(f"Unknown model {ref!r}: give a run id from this app, or hf://user/name")
            return resolve_model_choice(ref, variant=variant)  # a path on this machine
        if (variant or "").strip():
            raise ModelLoadError(f"{ref} is a single model, served as it is; a variant picks one of a run's models")
        if ref == IMAGENET:
            return ModelChoice(self.imagenet_model())
        return resolve_model_choice(ref, hub_login=local_paths)  # a visitor from elsewhere reads public repos only

    def classifier(self, path: Path) -> OnnxClassifier:
        """One shared session per model file (ONNX Runtime sessions are thread-safe); reloaded when the file changes.

        A file is loaded outside the server's lock: a model slow to load delays only callers of that same file.
        """
        try:
            stat = path.stat()
        except OSError:
            raise ModelLoadError(f"{path.name} is gone; upload it again") from None
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        dropped = []  # freed once the lock is released; callers still using one keep it until they finish
        with self._lock:
            future = self._models.get(key)
            loading = future is None
            if loading:
                future = self._models[key] = Future()
                while len(self._models) > self.max_models:
                    dropped.append(self._models.popitem(last=False))
            else:
                self._models.move_to_end(key)
        if dropped:
            dropped.clear()
            _give_back_freed_memory()
        if not loading:
            return future.result()  # waits while another caller loads this file
        try:
            model = OnnxClassifier(path, name=path.name, warmup_limit_s=self.warmup_limit_s)
        except BaseException as exc:
            # Not kept: the next caller tries again (a failure can pass, e.g. GPU memory in use by a training).
            with self._lock:
                if self._models.get(key) is future:
                    del self._models[key]
            future.set_exception(exc)
            raise
        future.set_result(model)
        return model

    def classify(self, paths: list[str], ref: str, top_k: int, local_paths: bool, variant: str | None = None) -> Classified:
        """Photos on disk classified by the model `ref` names (a run: `variant`, else its default)."""
        choice = self.choose_model(ref, local_paths, variant)
        model = self.classifier(choice.path)
        started = time.perf_counter()
        results = model.predict_files(paths, top_k=int(top_k))
        return Classified(results, model.provider, (time.perf_counter() - started) * 1000, choice.variant, choice.default)
