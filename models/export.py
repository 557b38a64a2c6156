"""ONNX export: one self-contained model.onnx per run, checked against PyTorch; fp16 and INT8 variants.

export_onnx() writes the file (weights inside, dynamic batch; the labels, the preprocessing and the
training config in its metadata, once each) and refuses to leave it behind unless ONNX Runtime
reproduces PyTorch. export_model() does that for a trained model held in memory (fit calls it), adds
the variants (INT8 always, fp16 where ONNX Runtime can use CUDA), times each one with ONNX Runtime
on this machine, and records every figure in metrics.json["export"], with the variant served by
default (choose_served); export_run() loads a run folder from disk and makes the same call.
"""

from __future__ import annotations

import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.atomic import write_bytes
from models.backbones import create_model
from models.preprocess import PreprocessSpec, UnreadableImage, load_rgb
from models.run_folder import DATA_REPORT, METRICS, ONNX_VARIANTS, RunFolder, RunFolderError, RunRecord
from models.runtime import INPUT_NAME, LOGITS_NAME, METADATA_KEYS, ModelLoadError, OnnxClassifier, cuda_status

OPSET = 20
# A variant passes when it is within these of its reference (PyTorch for fp32, the fp32 ONNX for the others).
TARGETS = {
    "fp32": {"max_abs_logit_diff": 1e-4, "min_top1_agreement": 1.0},
    "fp16": {"max_abs_logit_diff": 0.05, "min_top1_agreement": 0.995},
    # Accuracy may drop by 1 point, or by one image on sets under 100 (1 point is less than an image there).
    "int8": {"min_top1_agreement": 0.95, "max_accuracy_drop": 0.01},
}
INT8_METHOD = (
    "static QDQ (onnxruntime.quantization): per-channel int8 weights, uint8 activations, "
    "MinMax calibration on {n} validation inputs"
)
_BATCH = 32  # inputs per forward pass during checks: bounds memory for large validation sets
# INT8 calibrates on at most this many validation inputs, evenly spread over them: every training makes INT8,
# and calibration costs ~0.05 s per 224 px input on 2 cores (food4: 64 or all 80 give the same accuracy).
INT8_CALIBRATION_MAX = 64
# The variant served by default may trail fp32's validation accuracy by at most this (1 point).
SERVE_MAX_ACCURACY_DROP = 0.01
# Speed at export, as serving runs it (providers "auto", all cores): images/s on a batch of SPEED_BATCH
# validation inputs, the median of up to SPEED_RUNS timed runs after one warm-up run, stopping once
# SPEED_SECONDS of timed runs are spent. A ResNet-18 at 224 px on 2 cores: about 1.5 s for fp32, 0.6 s for INT8.
SPEED_BATCH, SPEED_RUNS, SPEED_SECONDS = 8, 5, 1.0


class ExportError(RuntimeError):
    """An export that cannot be produced or that failed its parity check; the message says which and why."""


class _WithProbabilities(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        logits = self.model(x)
        return logits, torch.softmax(logits, dim=1)


def export_onnx(
    model: nn.Module,
    labels: list[str],
    spec: PreprocessSpec,
    config: dict,
    path: str | Path,
    opset: int = OPSET,
    check_inputs: np.ndarray | None = None,
) -> dict:
    """Export `model` (eval mode, on CPU) to one .onnx file at `path` and check it against PyTorch.

    `config` is the training config (or, for a model not trained here, where it came from); the
    metadata holds it, the labels and the preprocessing, once each.
    Outputs "logits" and "probabilities" for inputs "input" [batch, 3, crop, crop]. The check runs
    ONNX Runtime's CPU provider on `check_inputs` (NCHW float32; two random inputs when None) and
    returns {"max_abs_logit_diff", "top1_agreement", ...}; a failing file is removed and ExportError raised.
    """
    return _export_checked(model, labels, spec, config, path, opset, check_inputs)[0]


def _export_checked(model, labels, spec, config, path, opset=OPSET, check_inputs=None) -> tuple[dict, np.ndarray]:
    """export_onnx(), and the ONNX model's logits on the check inputs (export_model compares the variants with them)."""
    path = Path(path)
    model = _cpu_eval_copy(model)
    if check_inputs is None:
        check_inputs = np.random.default_rng(0).standard_normal((2, 3, spec.crop, spec.crop), dtype=np.float32)
    reference = _torch_logits(model, check_inputs)
    if reference.shape[1] != len(labels):
        raise ExportError(f"{len(labels)} labels for a model with {reference.shape[1]} outputs")
    example = torch.zeros(2, 3, spec.crop, spec.crop)  # batch 2: a batch of 1 could be specialised away
    try:
        program = torch.onnx.export(
            _WithProbabilities(model).eval(),
            (example,),
            None,  # we serialise the proto ourselves: one file, written atomically
            dynamo=True,
            external_data=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[LOGITS_NAME, "probabilities"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            verbose=False,
        )
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc
    proto = program.model_proto
    _set_metadata(proto, labels, spec, config)
    write_bytes(path, proto.SerializeToString())
    try:
        record, logits = _check_variant("fp32", path, check_inputs, reference, reference_name="torch")
    except ModelLoadError as exc:
        path.unlink(missing_ok=True)
        raise ExportError(f"ONNX export removed, the runtime cannot load it: {exc}") from None
    if not record["passed"]:
        path.unlink(missing_ok=True)
        raise ExportError(f"ONNX export removed, it does not match PyTorch: {record['failure']}")
    return record, logits


def export_model(
    model: nn.Module,
    record: RunRecord,
    run_dir: str | Path,
    inputs: np.ndarray,
    targets: np.ndarray | None = None,
    fp16: bool | None = None,
    int8: bool = True,
    source: str = "given",
) -> dict:
    """Export a run's model, in memory, into its folder: model.onnx (+ fp16, INT8 variants), each checked and timed.

    `inputs`: preprocessed NCHW float32 validation inputs, `targets` their label indices, `source`
    says where they came from. `fp16=None`: only where ONNX Runtime's CUDA provider is usable (fp16
    is slower than fp32 on CPUs). Returns the record merged into metrics.json["export"]: each
    variant's parity, accuracy and speed, and "served", the variant served by default. Raises
    ExportError when the fp32 model cannot be exported faithfully; a variant that misses its
    targets is removed and recorded as failed.
    """
    run = RunFolder(run_dir)
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    targets = None if targets is None else np.asarray(targets)
    if inputs.ndim != 4 or not len(inputs) or (targets is not None and targets.shape != (len(inputs),)):
        shapes = f"inputs {inputs.shape}" + ("" if targets is None else f", targets {targets.shape}")
        raise ExportError(f"Expected N >= 1 preprocessed inputs (N, 3, H, W) and N targets, got {shapes}")

    fp32_path = run.onnx("fp32")
    parity, fp32_logits = _export_checked(model, record.labels, record.preprocessing, record.train, fp32_path,
                                          check_inputs=inputs)
    variants = {"fp32": {**parity, **_accuracy(fp32_logits, targets)}}
    if fp16 is None:
        fp16 = cuda_status()[0]
    for kind, wanted in (("fp16", fp16), ("int8", int8)):
        if wanted:
            variants[kind] = _make_variant(kind, run, fp32_path, inputs, fp32_logits, targets)
    for kind, variant in variants.items():
        if run.onnx(kind).is_file():  # a variant that failed its check is gone
            variant["speed"] = measure_speed(run.onnx(kind), inputs)

    try:
        previous = ((run.read_metrics() if run.file(METRICS).is_file() else {}).get("export") or {}).get("variants", {})
        # Variants exported earlier and not redone stay listed while their files exist (same weights).
        kept = {name: rec for name, rec in previous.items() if name not in variants and run.file(rec.get("file", "")).is_file()}
        export_record = {
            "opset": OPSET,
            "torch": torch.__version__,
            "onnxruntime": _ort_version(),
            "inputs": {"count": int(len(inputs)), "source": source, "labelled": targets is not None},
            "variants": {**variants, **kept},
        }
        export_record["served"] = choose_served(export_record["variants"])
        run.merge_metrics(export=export_record)
    except RunFolderError as exc:
        raise ExportError(str(exc)) from None
    return export_record


def export_run(
    run_dir: str | Path,
    inputs: np.ndarray | None = None,
    targets: np.ndarray | None = None,
    fp16: bool | None = None,
    int8: bool = True,
) -> dict:
    """export_model() for a run folder on disk: its weights loaded, checked on the validation photos
    its data report lists unless `inputs` (and `targets`) are given; the same variants by default."""
    run = RunFolder(run_dir)
    if not run.path.is_dir():
        raise ExportError(f"Run folder {run.path} does not exist")
    try:
        record = run.read_config()
    except RunFolderError as exc:
        raise ExportError(str(exc)) from None
    model = _load_model(run, record.arch, len(record.labels))
    source = "given"
    if inputs is None:
        inputs, targets = _validation_inputs(run, record)
        source = "data_report.json val"
    return export_model(model, record, run.path, inputs, targets, fp16=fp16, int8=int8, source=source)


def _make_variant(kind, run: RunFolder, fp32_path, inputs, fp32_logits, targets) -> dict:
    path = run.onnx(kind)
    try:
        if kind == "fp16":
            write_fp16(fp32_path, path)
        else:
            calibration = inputs[np.linspace(0, len(inputs) - 1, min(len(inputs), INT8_CALIBRATION_MAX)).round().astype(int)]
            write_int8(fp32_path, path, calibration)
    except Exception as exc:  # converter and quantizer failures are many and version-specific
        return {"file": path.name, "passed": False, "failure": f"conversion failed: {type(exc).__name__}: {exc}"}
    try:
        record, logits = _check_variant(kind, path, inputs, fp32_logits, reference_name="fp32")
    except Exception as exc:  # e.g. fp16 kernels the CPU provider lacks: the file is still meant for CUDA
        return {
            "file": path.name,
            "size_bytes": path.stat().st_size,
            "passed": None,
            "failure": f"not evaluated, ONNX Runtime's CPU provider could not run it: {exc}",
        }
    record.update(_accuracy(logits, targets, baseline=fp32_logits))
    if kind == "int8":
        record["method"] = INT8_METHOD.format(n=min(len(inputs), INT8_CALIBRATION_MAX))
        if "accuracy_change" in record:
            allowed = max(TARGETS["int8"]["max_accuracy_drop"], 1.0 / len(targets))
            if record["accuracy_change"] < -allowed - 1e-9:
                failure = f"accuracy dropped by {-record['accuracy_change']:.3f} (allowed {allowed:.3f})"
                record.update(passed=False, failure="; ".join(filter(None, [record.get("failure"), failure])))
    if not record["passed"]:
        path.unlink(missing_ok=True)
    return record


def measure_speed(path: str | Path, inputs: np.ndarray) -> dict:
    """Images per second of one .onnx file with ONNX Runtime as serving runs it, on a batch of `inputs`.

    Bounded: one warm-up run, then at most SPEED_RUNS timed runs, fewer once SPEED_SECONDS are spent.
    Never raises: a file that cannot be timed gets {"failure": ...} and is never served by default.
    """
    batch = np.ascontiguousarray(inputs[np.arange(SPEED_BATCH) % len(inputs)], dtype=np.float32)
    try:
        classifier = OnnxClassifier(path, providers="auto", name=Path(path).name)
        classifier.predict_arrays(batch)  # warm-up: buffers and kernels for this batch size
        times: list[float] = []
        while not times or (len(times) < SPEED_RUNS and sum(times) < SPEED_SECONDS):
            start = time.perf_counter()
            classifier.predict_arrays(batch)
            times.append(time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 -- a variant that cannot run here is recorded, not fatal
        return {"failure": f"could not be timed: {type(exc).__name__}: {exc}"}
    return {
        "images_per_s": round(SPEED_BATCH / statistics.median(times), 1),
        "batch": SPEED_BATCH,
        "runs": len(times),
        "provider": classifier.provider,
        "threads": classifier.session.get_session_options().intra_op_num_threads,
    }


def choose_served(variants: dict) -> str:
    """The variant a run serves by default: the fastest that passed its checks and whose validation accuracy is
    within SERVE_MAX_ACCURACY_DROP of fp32's. fp32 when fp32 was not timed, or no accuracy was measured."""

    def speed(record: dict) -> float:
        return (record.get("speed") or {}).get("images_per_s") or 0.0

    fp32 = variants.get("fp32") or {}
    served = "fp32"
    if not speed(fp32) or fp32.get("accuracy") is None:
        return served
    for kind, record in variants.items():
        if kind not in ONNX_VARIANTS or record.get("passed") is not True or record.get("accuracy") is None:
            continue
        # The tolerance absorbs float rounding: 0.53 - 0.54 is -0.010000000000000009.
        close_enough = record["accuracy"] >= fp32["accuracy"] - SERVE_MAX_ACCURACY_DROP - 1e-9
        if close_enough and speed(record) > speed(variants[served]):
            served = kind
    return served


def write_fp16(fp32_path: str | Path, path: str | Path) -> None:
    """fp16 weights and compute (meant for CUDA), float32 input and outputs; metadata copied from fp32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    source = onnx.load(str(fp32_path))
    # keep_io_types: callers still pass and receive float32; the casts sit inside the graph.
    proto = convert_float_to_float16(source, keep_io_types=True)
    _copy_metadata(source, proto)
    write_bytes(path, proto.SerializeToString())


def write_int8(fp32_path: str | Path, path: str | Path, calibration_inputs: np.ndarray) -> None:
    """Static INT8 quantization (QDQ, per-channel weights) calibrated on preprocessed NCHW inputs."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration_inputs = np.ascontiguousarray(calibration_inputs, dtype=np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._starts = iter(range(0, len(calibration_inputs), _BATCH))

        def get_next(self):
            start = next(self._starts, None)
            return None if start is None else {INPUT_NAME: calibration_inputs[start : start + _BATCH]}

    with tempfile.TemporaryDirectory() as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        # Shape inference and graph fusions first, so the quantizer sees the graph ORT will run.
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(
            str(prepared),
            str(quantized),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            # uint8 activations x int8 weights is the pairing ORT's CPU kernels fuse into fast int8
            # convolutions; int8 x int8 measured 3-4x slower than this on an AVX-512 VNNI CPU.
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        proto = onnx.load(str(quantized))
    _copy_metadata(onnx.load(str(fp32_path)), proto)
    write_bytes(path, proto.SerializeToString())


def _check_variant(kind: str, path: Path, inputs: np.ndarray, reference: np.ndarray, reference_name: str):
    logits = _onnx_logits(path, inputs)
    diff = float(np.abs(logits - reference).max())
    agreement = float((logits.argmax(1) == reference.argmax(1)).mean())
    targets = TARGETS[kind]
    failures = []
    if diff >= targets.get("max_abs_logit_diff", np.inf):
        failures.append(f"max |logit diff| {diff:.3g} vs {reference_name} (target < {targets['max_abs_logit_diff']})")
    if agreement < targets["min_top1_agreement"]:
        failures.append(f"top-1 agreement {agreement:.2%} with {reference_name} (target >= {targets['min_top1_agreement']:.1%})")
    record = {
        "file": path.name,
        "size_bytes": path.stat().st_size,
        "reference": reference_name,
        "max_abs_logit_diff": diff,
        "top1_agreement": agreement,
        "passed": not failures,
        "targets": targets,
    }
    if failures:
        record["failure"] = "; ".join(failures)
    return record, logits


def _accuracy(logits: np.ndarray, targets: np.ndarray | None, baseline: np.ndarray | None = None) -> dict:
    if targets is None:
        return {}
    accuracy = float((logits.argmax(1) == targets).mean())
    if baseline is None:
        return {"accuracy": accuracy}
    return {"accuracy": accuracy, "accuracy_change": accuracy - float((baseline.argmax(1) == targets).mean())}


def _onnx_logits(path: Path, inputs: np.ndarray) -> np.ndarray:
    # Loading through the runtime also proves the metadata and input signature are what it accepts.
    classifier = OnnxClassifier(path, providers="cpu")
    return np.concatenate([classifier.predict_arrays(inputs[i : i + _BATCH]) for i in range(0, len(inputs), _BATCH)])


def _torch_logits(model: nn.Module, inputs: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate(
            [model(torch.from_numpy(inputs[i : i + _BATCH])).numpy() for i in range(0, len(inputs), _BATCH)]
        )


def _set_metadata(proto, labels: list[str], spec: PreprocessSpec, config: dict) -> None:
    _put_metadata(
        proto, {"labels": json.dumps(list(labels)), "preprocessing": json.dumps(spec.to_dict()), "config": json.dumps(config)}
    )


def _copy_metadata(source, proto) -> None:
    """Our metadata from `source` onto `proto` (converters keep or replace metadata_props inconsistently)."""
    _put_metadata(proto, {p.key: p.value for p in source.metadata_props if p.key in METADATA_KEYS})


def _put_metadata(proto, values: dict[str, str]) -> None:
    kept = [p for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in values.items():
        proto.metadata_props.add(key=key, value=value)


def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    """The model in eval mode on CPU, copied when that would change the caller's model."""
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if on_cpu and not model.training:
        return model
    return copy.deepcopy(model).cpu().eval()


def _load_model(run: RunFolder, arch: str, num_classes: int) -> nn.Module:
    from safetensors.torch import load_file

    weights = run.weights
    if not weights.is_file():
        raise ExportError(f"{run.path} has no {weights.name}: the run has not finished training")
    model = create_model(arch, num_classes, "none")
    try:
        model.load_state_dict(load_file(str(weights)))
    except Exception as exc:  # safetensors header errors and state-dict mismatches alike
        raise ExportError(f"{weights} does not hold a {arch} with {num_classes} classes: {exc}") from None
    return model.eval()


def _validation_inputs(run: RunFolder, record: RunRecord) -> tuple[np.ndarray, np.ndarray]:
    where = run.file(DATA_REPORT)
    try:
        report = run.read_json(DATA_REPORT, "the list of validation photos")
        root = run.photo_root(report)
        files = report["files"]["val"]
    except RunFolderError as exc:
        raise ExportError(str(exc)) from None
    except (KeyError, TypeError):
        raise ExportError(f"{where} lists no validation photos (files.val)") from None
    if not files:
        raise ExportError(f"{where} lists no validation photos to check the export on")
    missing = [rel for rel, _ in files if not (root / rel).is_file()]
    if missing:
        raise ExportError(
            f"{len(missing)} of {len(files)} validation photos are gone from {root} (first: {missing[0]}); "
            "the export is checked on them, so restore the dataset folder or pass inputs explicitly"
        )
    index = {label: i for i, label in enumerate(record.labels)}
    arrays, targets = [], []
    for rel, label in files:
        try:
            arrays.append(record.preprocessing.to_array(load_rgb(root / rel)))
        except UnreadableImage as exc:
            raise ExportError(f"Validation photo {root / rel} cannot be read: {exc}") from None
        if label not in index:
            raise ExportError(f"Validation photo {rel} has label {label!r}, which is not among the run's labels")
        targets.append(index[label])
    return np.stack(arrays), np.asarray(targets)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
