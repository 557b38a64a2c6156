"""Benchmark: ONNX Runtime (fp32, INT8; fp16 on CUDA) against PyTorch eager for ResNet-18 at 224 px.

    python bench/bench_onnx.py                        # CPU: torch fp32 / bf16, ORT fp32 / INT8
    python bench/bench_onnx.py --run RUN_DIR --data ../shared/data/food4   # + accuracy on food4/test, served variant
    python bench/bench_onnx.py --device cuda          # ORT CUDA fp32/fp16 vs torch fp32/bf16

Weights are random (weights="none"): ImageNet weights cannot be downloaded offline, and speed does
not depend on the values. Targets: ORT fp32 >= 1.5x torch eager on CPU at the same thread count.
Torch bf16 (autocast bfloat16, channels_last) is a peer on CPUs with native bfloat16 (AVX512-BF16 or
AMX); elsewhere it is emulated, slower than fp32, and left out. With --run, the variant the run's
export chose to serve (the fastest within 1 point of fp32's validation accuracy) is printed too.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from models.backbones import create_model, preprocessing_for  # noqa: E402
from models.export import export_onnx, export_run, write_fp16, write_int8  # noqa: E402
from models.run_folder import RunFolder  # noqa: E402
from models.runtime import INPUT_NAME, LOGITS_NAME, VARIANT_NAMES, OnnxClassifier, run_variants  # noqa: E402
from trainer.step import cpu_has_native_bf16  # noqa: E402

IMAGE_SIZE = 224
NUM_CLASSES = 1000
BATCHES = (1, 32)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both torch and ORT")
    parser.add_argument("--seconds", type=float, default=6.0, help="time budget per measurement, after warm-up")
    parser.add_argument("--run", type=Path, help="a run folder trained on --data, for INT8 accuracy")
    parser.add_argument("--data", type=Path, help="dataset folder with test/<label>/*.jpg (e.g. food4)")
    return parser


def timed(step, batch: int, seconds: float, warmup: int = 3, min_iters: int = 5) -> float:
    """Images per second from the median step time (robust to other jobs on a shared machine)."""
    for _ in range(warmup):
        step()
    times, deadline = [], time.perf_counter() + seconds
    while len(times) < min_iters or time.perf_counter() < deadline:
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def bench_model(folder: Path):
    """ResNet-18 (random weights) exported to fp32 ONNX in `folder`; returns (model, spec, path)."""
    torch.manual_seed(0)
    model = create_model("resnet18", NUM_CLASSES, "none").eval()
    spec = preprocessing_for("resnet18", IMAGE_SIZE)
    path = folder / "model.onnx"
    labels = [f"class_{i}" for i in range(NUM_CLASSES)]
    export_onnx(model, labels, spec, {"bench": "resnet18, random weights"}, path)
    return model, spec, path


def bench_cpu(args, folder: Path) -> None:
    torch.set_num_threads(args.threads)
    model, spec, fp32_path = bench_model(folder)
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((32, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    int8_path = folder / "model.int8.onnx"
    write_int8(fp32_path, int8_path, calibration)
    fp32 = OnnxClassifier(fp32_path, providers="cpu", intra_op_threads=args.threads)
    int8 = OnnxClassifier(int8_path, providers="cpu", intra_op_threads=args.threads)

    bf16 = cpu_has_native_bf16()
    # Plain torch as a person serving it would: bfloat16 autocast on channels_last weights and inputs,
    # which lets oneDNN use AMX / AVX512-BF16 (training's "auto" precision on this CPU does the same).
    bf16_model = copy.deepcopy(model).to(memory_format=torch.channels_last) if bf16 else None

    def torch_step(net, xt, dtype=None):
        def step():
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                net(xt)

        return step

    engines = ["torch fp32 (eager)", *(["torch bf16 (autocast, channels_last)"] if bf16 else []), "ORT fp32", "ORT INT8"]
    results: dict[str, dict[int, float]] = {name: {} for name in engines}
    for batch in BATCHES:
        x = rng.standard_normal((batch, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        xt = torch.from_numpy(x)
        results["torch fp32 (eager)"][batch] = timed(torch_step(model, xt), batch, args.seconds)
        if bf16:
            x_last = xt.contiguous(memory_format=torch.channels_last)
            results[engines[1]][batch] = timed(torch_step(bf16_model, x_last, torch.bfloat16), batch, args.seconds)
        results["ORT fp32"][batch] = timed(lambda: fp32.session.run([LOGITS_NAME], {INPUT_NAME: x}), batch, args.seconds)
        results["ORT INT8"][batch] = timed(lambda: int8.session.run([LOGITS_NAME], {INPUT_NAME: x}), batch, args.seconds)

    print(f"CPU, {args.threads} threads, ResNet-18 {IMAGE_SIZE} px, random weights; images/s (median step)")
    print(f"{'engine':<38}" + "".join(f"{f'batch {b}':>10}" for b in BATCHES) + f"{'vs ORT fp32':>13}{'vs torch fp32':>15}")
    for name in engines:
        figures = results[name]
        row = "".join(f"{figures[b]:>10.1f}" for b in BATCHES)
        # Ratios at the largest batch: the throughput a "Classify all" sees.
        big = BATCHES[-1]
        ratios = f"{figures[big] / results['ORT fp32'][big]:>12.2f}x{figures[big] / results['torch fp32 (eager)'][big]:>14.2f}x"
        print(f"{name:<38}{row}{ratios}")
    if not bf16:
        print("torch bf16: left out, this CPU has no native bfloat16 (AVX512-BF16 or AMX); emulated it is slower than fp32")


def bench_accuracy(run: Path, data: Path, threads: int) -> None:
    """fp32 vs INT8 accuracy of a trained run on the dataset's test/ photos (never seen in training)."""
    folder = RunFolder(run)
    if not folder.onnx("int8").is_file() or "served" not in (folder.read_metrics().get("export") or {}):
        print(f"exporting {run} (INT8 calibrated on its validation photos; every variant timed)...")
        export_run(run, int8=True)
    fp32 = OnnxClassifier(folder.onnx("fp32"), providers="cpu", intra_op_threads=threads)
    int8 = OnnxClassifier(folder.onnx("int8"), providers="cpu", intra_op_threads=threads)
    photos = sorted(p for p in (data / "test").glob("*/*") if p.is_file())
    unknown = sorted({p.parent.name for p in photos} - set(fp32.labels))
    if not photos or unknown:
        raise SystemExit(f"{data}/test must hold <label>/photo folders for the run's labels; unknown: {unknown}")
    targets = np.array([fp32.labels.index(p.parent.name) for p in photos])
    inputs = np.stack([fp32.preprocess(p) for p in photos])
    top1 = {}
    for name, classifier in (("fp32", fp32), ("int8", int8)):
        top1[name] = np.concatenate([classifier.predict_arrays(inputs[i : i + 32]) for i in range(0, len(inputs), 32)]).argmax(1)
    acc = {name: float((pred == targets).mean()) for name, pred in top1.items()}
    agreement = float((top1["fp32"] == top1["int8"]).mean())
    print(
        f"{data.name}/test, {len(photos)} photos: fp32 accuracy {acc['fp32']:.2%}, int8 {acc['int8']:.2%} "
        f"(change {100 * (acc['int8'] - acc['fp32']):+.1f} points), top-1 agreement {agreement:.2%}"
    )
    print_served(run)


def print_served(run: Path) -> None:
    """The variant the run's export chose to serve, with the figures it chose on (measured at export)."""
    variants = run_variants(run)
    fp32 = next((v.images_per_s for v in variants if v.name == "fp32"), None)
    default = next(v for v in variants if v.default)
    print(f"Served by default: {VARIANT_NAMES[default.name]} (the export's choice: the fastest within 1 point of "
          "fp32's validation accuracy, both measured at export)")
    for variant in variants:
        print(f"  {variant.label(fp32)}{' (served)' if variant.default else ''}")


def bench_cuda(args, folder: Path) -> None:
    import onnxruntime as ort

    if not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA GPU visible to torch")
    torch.backends.cudnn.benchmark = True  # eager's best setting: the shapes are fixed per batch size
    model, spec, fp32_path = bench_model(folder)
    write_fp16(fp32_path, folder / "model.fp16.onnx")
    model = model.cuda()
    sessions = {
        name: OnnxClassifier(folder / file, providers="cuda").session
        for name, file in (("ORT fp32", "model.onnx"), ("ORT fp16", "model.fp16.onnx"))
    }
    print(f"CUDA ({torch.cuda.get_device_name()}), ResNet-18 {IMAGE_SIZE} px; images/s (median step), inputs on GPU")
    for batch in (1, 64):
        x = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, device="cuda")
        with torch.inference_mode():
            reference = model(x).cpu().numpy()

        def torch_step(dtype):
            def step():
                with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                    model(x)
                torch.cuda.synchronize()

            return step

        results = {
            "torch fp32": timed(torch_step(torch.float32), batch, args.seconds, warmup=10),
            "torch bf16": timed(torch_step(torch.bfloat16), batch, args.seconds, warmup=10),
        }
        x_gpu = ort.OrtValue.ortvalue_from_numpy(x.cpu().numpy(), "cuda", 0)
        for name, session in sessions.items():
            # IO binding with the input and output resident on the GPU: no host copies in the timed loop.
            binding = session.io_binding()
            binding.bind_ortvalue_input(INPUT_NAME, x_gpu)
            output = ort.OrtValue.ortvalue_from_shape_and_type((batch, NUM_CLASSES), np.float32, "cuda", 0)
            binding.bind_ortvalue_output(LOGITS_NAME, output)
            results[name] = timed(lambda: session.run_with_iobinding(binding), batch, args.seconds, warmup=10)
            diff = float(np.abs(binding.copy_outputs_to_cpu()[0] - reference).max())
            print(f"  batch {batch}: {name} max |logit diff| vs torch fp32 {diff:.3g}")
        line = ", ".join(f"{name} {ips:.0f}" for name, ips in results.items())
        print(
            f"batch {batch:>2}: {line} images/s; ORT fp32 / torch fp32 {results['ORT fp32'] / results['torch fp32']:.2f}x, "
            f"ORT fp16 / torch bf16 {results['ORT fp16'] / results['torch bf16']:.2f}x"
        )


def main(argv=None) -> None:
    args = get_args_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.device == "cuda":
            bench_cuda(args, Path(tmp))
        else:
            bench_cpu(args, Path(tmp))
    if args.run:
        if not args.data:
            raise SystemExit("--run needs --data (the dataset the run was trained on)")
        bench_accuracy(args.run, args.data, args.threads)


if __name__ == "__main__":
    main()
