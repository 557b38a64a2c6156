"""The four-schedule experiment on real photos: the estimate shown before starting against the time taken,
the comparison table, and a second seed of one arm beside it, to see how much of a difference is noise.

    python bench/bench_experiment.py ../shared/data/food4 --image-size 64 --epochs 6

Prints the estimate/actual ratio, the comparison and the seed-to-seed differences; writes the runs and
report.html under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.compare import compare  # noqa: E402
from trainer.compare_report import html_report, metrics_frame, settings_frame  # noqa: E402
from trainer.config import ScheduleConfig, TrainConfig  # noqa: E402
from trainer.experiment import SeriesPlanned, duration_words, run_experiment  # noqa: E402
from trainer.train import fit, prepare_run_dir  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default="../shared/data/food4")
    parser.add_argument("--out", default="/tmp/bench-experiment")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--strategy", default="full")
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args()

    base = TrainConfig(weights="none", strategy=args.strategy, image_size=args.image_size, batch_size=32,
                       augment="none", schedule=ScheduleConfig(lr=args.lr, epochs=args.epochs))
    out = prepare_run_dir(args.out, overwrite=True).path
    planned = []
    started = time.perf_counter()
    done = run_experiment(args.data, "schedules", base, lambda index, arm: out / f"{index}-{arm.name}", workdir=out,
                          emit=lambda event: planned.append(event) if isinstance(event, SeriesPlanned) else None)
    took = time.perf_counter() - started
    estimate = planned[0].seconds
    print(f"four schedules, {planned[0].train} training / {planned[0].val} validation photos, {args.image_size} px, "
          f"{args.epochs} epochs, {args.strategy}, weights none")
    print(f"estimate before starting: {estimate:.0f} s ({duration_words(estimate)}); took {took:.0f} s; "
          f"actual/estimate = {took / estimate:.2f}")

    comparison = compare(done.run_dirs)
    print("\n" + comparison.data()["note"])
    print(settings_frame(comparison).to_string(index=False))
    print(metrics_frame(comparison).to_string(index=False))
    (out / "report.html").write_text(html_report(comparison), encoding="utf-8")

    cosine = next(path for path in done.run_dirs if "Cosine" in path.name)
    config = TrainConfig.from_dict(json.loads((cosine / "config.json").read_text())["train"])
    again = fit(args.data, replace(config, seed=config.seed + 1), out / "2b-CosineAnnealingLR-seed1", overwrite=True).run_dir
    seeds = compare([cosine, again])
    print("\nthe same CosineAnnealingLR run with seed 1 (seed also changes the split):")
    print(seeds.data()["note"])
    print(metrics_frame(seeds).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
