"""Serving many callers: a model reference resolved to its .onnx file, one shared classifier per file.

A reference is a run id from the store, "imagenet" (torchvision's ResNet-18, exported once on first
use), `hf://user/name`, or, for a person on their own machine, an .onnx path or a run folder.
No torch here: only the one-time ImageNet export imports it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from models.run_store import RunStore
from models.runtime import ModelLoadError, OnnxClassifier, resolve_model

IMAGENET = "imagenet"  # the reference of the default ImageNet classifier
IMAGENET_ARCH = "resnet18"


class ModelServer:
    """Resolves model references against a run store and keeps one OnnxClassifier per model file."""

    def __init__(self, store: RunStore):
        self.store = store
        self._classifiers: dict[tuple[str, float], OnnxClassifier] = {}
        self._lock = threading.Lock()

    def imagenet_model(self) -> Path:
        """The torchvision ImageNet ResNet-18 exported once to ONNX, so classifying works before any training."""
        path = self.store.root / f"imagenet-{IMAGENET_ARCH}.onnx"
        with self._lock:
            if not path.is_file():
                from models.backbones import create_imagenet_classifier, preprocessing_for
                from models.export import export_onnx

                model, labels = create_imagenet_classifier(IMAGENET_ARCH)
                path.parent.mkdir(parents=True, exist_ok=True)
                export_onnx(model, labels, preprocessing_for(IMAGENET_ARCH), {"source": "torchvision ImageNet weights"},
                            path)
        return path

    def model_path(self, ref: str, local_paths: bool) -> Path:
        """The .onnx file a reference names; paths only when `local_paths` (the caller is on this machine)."""
        ref = (ref or "").strip()
        if not ref:
            raise ModelLoadError("Choose a model: train one in the Fine-tune tab, upload an .onnx file, or pick ImageNet")
        if ref == IMAGENET:
            return self.imagenet_model()
        if ref.startswith("hf://"):
            return resolve_model(ref)
        try:
            run = self.store.find(ref)
        except ValueError:  # not a run id of this store
            run = None
        if run is not None:
            return resolve_model(run)
        if not local_paths:
            raise ModelLoadError(f"Unknown model {ref!r}: give a run id from this app, or hf://user/name")
        return resolve_model(ref)

    def classifier(self, path: Path) -> OnnxClassifier:
        """One shared session per model file (ONNX Runtime sessions are thread-safe); reloaded when the file changes."""
        key = (str(path), path.stat().st_mtime)
        with self._lock:
            if key not in self._classifiers:
                self._classifiers[key] = OnnxClassifier(path)
            return self._classifiers[key]

    def classify_files(self, paths: list[str], ref: str, top_k: int, local_paths: bool) -> tuple[list[dict], str, float]:
        """(per-photo results in order, provider, latency in ms) for photos on disk."""
        model = self.classifier(self.model_path(ref, local_paths))
        started = time.perf_counter()
        results = model.predict_files(paths, top_k=int(top_k))
        return results, model.provider, (time.perf_counter() - started) * 1000
