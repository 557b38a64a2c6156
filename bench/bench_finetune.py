"""Benchmark: Transfer Studio's fit() against the plain tutorial loop, on a real photo folder.

The baseline is the loop from the classic transfer-learning tutorials, written faithfully:
`ImageFolder` + `DataLoader` decoding every JPEG every epoch, the frozen backbone run forward on
every image every epoch, the head trained, a validation phase each epoch keeping the best weights. Both sides use the same split, seed, head
initialisation, optimizer and schedule, so the linear probe must end with the same head predictions.
Then the unfrozen strategies against the loop unfrozen: finetune, full, partial (layer4 and the head,
on layer3 activations computed once, checked against the same training without the cache) and, on
CPUs with native bfloat16, each again with bf16 autocast + channels_last. Each measurement runs in its
own process so peak memory (max RSS) is its own.

    python bench/bench_finetune.py --data ../shared/data/food4 --epochs 20
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def config_for(strategy: str, epochs: int, image_size: int, precision: str = "fp32"):
    from trainer.config import ScheduleConfig, TrainConfig

    return TrainConfig(arch="resnet18", weights="none", strategy=strategy, augment="none", image_size=image_size,
                       batch_size=32, seed=0, head_epochs=0, precision=precision,
                       schedule=ScheduleConfig(lr=0.01, epochs=epochs))


def run_ours(data: str, strategy: str, epochs: int, image_size: int, precision: str = "fp32", cache: bool = True) -> dict:
    import trainer.task
    from trainer.train import fit

    if not cache:  # as if the photos were too many to cache: the frozen part runs at every step
        trainer.task.MAX_CACHED_BYTES = 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = fit(data, config_for(strategy, epochs, image_size, precision), Path(out) / "run", export=False)
        train_images = json.loads((Path(out) / "run" / "data_report.json").read_text())["totals"]["train"]
    val = sorted(result.predictions["val"])
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "predictions": [p[2] for p in val], "paths": [p[0] for p in val],
            "val_accuracy": result.metrics["val"]["accuracy"], "images_per_second": train_images * epochs / seconds}


def run_plain(data: str, strategy: str, epochs: int, image_size: int) -> dict:
    """The tutorial loop. Only the split and the order of files are taken from our intake, for a fair comparison."""
    import torch
    from torch import nn
    from torch.utils.data import ConcatDataset, DataLoader, Subset
    from torchvision.datasets import ImageFolder

    from models.backbones import create_model, preprocessing_for
    from trainer.data import open_dataset

    started = time.perf_counter()
    config = config_for(strategy, epochs, image_size)
    split = open_dataset(data, val_fraction=config.val_fraction, seed=config.seed).report
    root = Path(split["root"])
    transform = preprocessing_for("resnet18", image_size).torch_eval_transform()
    split_dirs = ("train", "val", "valid") if (root / "train").is_dir() else ("",)
    folders = {d: ImageFolder(str(root / d), transform=transform) for d in split_dirs if (root / d).is_dir()}
    samples = [(folder, i, f"{d}/{Path(path).relative_to(root / d).as_posix()}".lstrip("/"))
               for d, folder in folders.items() for i, (path, _) in enumerate(folder.samples)]
    where = {rel: (folder, i) for folder, i, rel in samples}

    def subset(rels):
        return ConcatDataset([Subset(where[rel][0], [where[rel][1]]) for rel in rels])

    train_set = subset([rel for rel, _ in split["files"]["train"]])
    val_rels = [rel for rel, _ in split["files"]["val"]]
    val_set = subset(val_rels)
    targets = [where[rel][0].samples[where[rel][1]][1] for rel in val_rels]
    classes = next(iter(folders.values())).classes
    torch.manual_seed(config.seed)
    model = create_model("resnet18", len(classes), "none")
    frozen = strategy == "linear-probe"
    for name, p in model.named_parameters():
        p.requires_grad_(not frozen or name.startswith("fc."))
    params = model.fc.parameters() if frozen else model.parameters()
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    criterion = nn.CrossEntropyLoss()
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(config.seed))
    val_loader = DataLoader(val_set, batch_size=config.batch_size)

    def evaluate():
        model.eval()
        loss, predictions = 0.0, []
        with torch.no_grad():
            for x, y in val_loader:
                logits = model(x)
                loss += criterion(logits, y).item() * len(y)
                predictions += logits.argmax(1).tolist()
        return loss / len(val_set), predictions

    best_key, best_state = None, None
    for _ in range(epochs):
        model.train()
        if frozen:
            model.eval()  # the tutorial's frozen backbone: BatchNorm statistics fixed
        for x, y in loader:
            if frozen:
                with torch.no_grad():
                    features = torch.flatten(model.avgpool(model.layer4(model.layer3(model.layer2(model.layer1(
                        model.maxpool(model.relu(model.bn1(model.conv1(x))))))))), 1)
                logits = model.fc(features)
            else:
                logits = model(x)
            loss = criterion(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        # The tutorial's val phase: keep the weights of the best epoch (ties broken by the lower loss, as fit does).
        val_loss, predictions = evaluate()
        key = (sum(p == t for p, t in zip(predictions, targets)), -val_loss)
        if best_key is None or key > best_key:
            best_key, best_state = key, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    _, predictions = evaluate()
    seconds = time.perf_counter() - started
    order = sorted(range(len(val_rels)), key=lambda i: val_rels[i])
    return {"seconds": seconds, "predictions": [predictions[i] for i in order], "paths": [val_rels[i] for i in order],
            "val_accuracy": sum(p == t for p, t in zip(predictions, targets)) / len(targets),
            "images_per_second": len(train_set) * epochs / seconds}


def measure(side: str, data: str, strategy: str, epochs: int, image_size: int, precision: str = "fp32",
            cache: bool = True) -> dict:
    """One measurement in a fresh process: its time, predictions and peak memory."""
    done = subprocess.run([sys.executable, __file__, "--one", side, "--data", data, "--strategy", strategy,
                           "--epochs", str(epochs), "--image-size", str(image_size), "--precision", precision,
                           *([] if cache else ["--no-cache"])],
                          capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def same_predictions(a: dict, b: dict) -> float:
    assert a["paths"] == b["paths"]
    return sum(x == y for x, y in zip(a["predictions"], b["predictions"])) / len(a["predictions"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "food4"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=int, default=2, help="epochs for the unfrozen throughput runs")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--strategy", default="linear-probe")
    parser.add_argument("--skip-linear-probe", action="store_true", help="only the unfrozen strategies")
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--no-cache", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one", choices=("ours", "plain"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one == "ours":
        result = run_ours(args.data, args.strategy, args.epochs, args.image_size, args.precision, not args.no_cache)
    elif args.one == "plain":
        result = run_plain(args.data, args.strategy, args.epochs, args.image_size)
    if args.one:
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    print(f"data {args.data}, resnet18 (weights none), {args.image_size}px, {os.cpu_count()} CPU cores, seed 0, no augmentation")
    if not args.skip_linear_probe:
        ours = measure("ours", args.data, "linear-probe", args.epochs, args.image_size)
        plain = measure("plain", args.data, "linear-probe", args.epochs, args.image_size)
        same = same_predictions(ours, plain)
        print(f"linear-probe, {args.epochs} epochs: ours {ours['seconds']:.1f}s, plain loop {plain['seconds']:.1f}s, "
              f"speed-up {plain['seconds'] / ours['seconds']:.1f}x; same head predictions on {same:.1%} of val photos; "
              f"val acc {ours['val_accuracy']:.3f} vs {plain['val_accuracy']:.3f}; "
              f"peak RSS {ours['peak_rss_mb']:.0f} MB vs {plain['peak_rss_mb']:.0f} MB")
    from trainer.step import cpu_has_native_bf16

    epochs = args.finetune_epochs
    plain = measure("plain", args.data, "full", epochs, args.image_size)
    print(f"\nunfrozen, {epochs} epochs, same photos; the plain unfrozen loop: {plain['images_per_second']:.1f} img/s, "
          f"{plain['seconds']:.1f} s end to end, val acc {plain['val_accuracy']:.3f}, "
          f"peak RSS {plain['peak_rss_mb']:.0f} MB")
    precisions = ("fp32", "bf16") if cpu_has_native_bf16() else ("fp32",)
    if len(precisions) == 1:
        print("this CPU has no native bfloat16 (AVX512-BF16 or AMX): bf16 rows left out")
    for strategy in ("full", "finetune", "partial"):
        for precision in precisions:
            ours = measure("ours", args.data, strategy, epochs, args.image_size, precision)
            print(f"{strategy:>8} {precision}: {ours['images_per_second']:.1f} img/s, {ours['seconds']:.1f} s end to end, "
                  f"{plain['seconds'] / ours['seconds']:.2f}x the loop; val acc {ours['val_accuracy']:.3f}; "
                  f"peak RSS {ours['peak_rss_mb']:.0f} MB")
    cached = measure("ours", args.data, "partial", epochs, args.image_size)
    uncached = measure("ours", args.data, "partial", epochs, args.image_size, cache=False)
    print(f"partial with layer3 activations cached {cached['seconds']:.1f} s vs computed every step "
          f"{uncached['seconds']:.1f} s: {uncached['seconds'] / cached['seconds']:.1f}x faster; "
          f"same predictions on {same_predictions(cached, uncached):.1%} of val photos")


if __name__ == "__main__":
    main()
