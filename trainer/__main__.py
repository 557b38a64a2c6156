"""The trainer CLI: `python -m trainer lr|fit|lr-find ...`. Parse, build the config, call one function."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from trainer.config import ARCHS, AUGMENTS, OPTIMIZERS, STEP_PER, STRATEGIES, ConfigError, ScheduleConfig, TrainConfig
from trainer.schedules import CATALOGUE, ScheduleError, lr_curve


def _key_value(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param takes key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare string, e.g. mode=triangular2 or lr_lambda=0.95**epoch
    return key.strip(), value


def add_schedule_args(parser: argparse.ArgumentParser, epochs: int = 10, lr: float = 0.01) -> None:
    """The schedule flags, shared by `lr`, `fit` and `lr-find`."""
    parser.add_argument("--scheduler", default="CosineAnnealingLR", choices=list(CATALOGUE), metavar="NAME",
                        help=f"one of: {', '.join(CATALOGUE)}")
    parser.add_argument("--lr", type=float, default=lr, help="base learning rate")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--param", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="scheduler parameter, JSON when possible: milestones=[3,6] gamma=0.5 lr_lambda='0.95 ** epoch'")
    parser.add_argument("--warmup-epochs", type=int, default=0, help="linear warm-up epochs in front of the scheduler")
    parser.add_argument("--step-per", choices=STEP_PER, default="epoch",
                        help="step the scheduler after every epoch or every batch")


def schedule_from_args(args: argparse.Namespace, steps_per_epoch: int = 1) -> ScheduleConfig:
    return ScheduleConfig(
        scheduler=args.scheduler,
        lr=args.lr,
        epochs=args.epochs,
        steps_per_epoch=steps_per_epoch,
        params=dict(args.param),
        warmup_epochs=args.warmup_epochs,
        step_per=args.step_per,
    )


def add_train_args(parser: argparse.ArgumentParser) -> None:
    """The model and data flags, shared by `fit` and `lr-find`."""
    defaults = TrainConfig()
    parser.add_argument("data", help="a folder of class subfolders (or train/ val/ test/), or a .zip of one")
    parser.add_argument("--arch", choices=ARCHS, default=defaults.arch)
    parser.add_argument("--weights", default=defaults.weights, help="imagenet, none, or a .safetensors/.pth path")
    parser.add_argument("--strategy", choices=STRATEGIES, default=defaults.strategy)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--head-epochs", type=int, default=defaults.head_epochs,
                        help="finetune: epochs training only the head before unfreezing")
    parser.add_argument("--head-lr-mult", type=float, default=defaults.head_lr_mult,
                        help="finetune: head LR = this x backbone LR")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.optimizer)
    parser.add_argument("--momentum", type=float, default=defaults.momentum)
    parser.add_argument("--nesterov", action="store_true")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    parser.add_argument("--class-weighted", action="store_true", help="weight the loss by inverse class frequency")
    parser.add_argument("--augment", choices=AUGMENTS, default=defaults.augment)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--patience", type=int, default=defaults.patience, help="early stopping; 0 = off")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=defaults.device)
    add_schedule_args(parser, epochs=defaults.epochs, lr=defaults.lr)


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    config = TrainConfig(
        arch=args.arch, weights=args.weights, strategy=args.strategy, schedule=schedule_from_args(args),
        batch_size=args.batch_size, head_epochs=args.head_epochs, head_lr_mult=args.head_lr_mult,
        optimizer=args.optimizer, momentum=args.momentum, nesterov=args.nesterov, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, class_weighted=args.class_weighted, augment=args.augment,
        image_size=args.image_size, val_fraction=args.val_fraction, seed=args.seed, patience=args.patience,
        device=args.device,
    )
    config.validate()
    return config


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description="Transfer Studio: schedules and fine-tuning")
    commands = parser.add_subparsers(dest="command", required=True)

    lr = commands.add_parser("lr", help="print the learning rate at every optimizer step of a schedule")
    add_schedule_args(lr)
    lr.add_argument("--steps-per-epoch", type=int, default=1)
    lr.add_argument("--val-loss", type=json.loads, default=None,
                    help="ReduceLROnPlateau: JSON list of per-epoch validation losses (default: a made-up curve)")
    lr.add_argument("--json", action="store_true", help='print {"lr": [...]}')

    fit = commands.add_parser("fit", help="fine-tune a ResNet on a photo folder or zip and write a run folder")
    add_train_args(fit)
    fit.add_argument("--out", required=True, help="run folder to write (must be empty unless --overwrite)")
    fit.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out")

    finder = commands.add_parser("lr-find", help="sweep the LR exponentially and suggest one (fastai's lr_find)")
    add_train_args(finder)
    finder.add_argument("--iterations", type=int, default=100)
    finder.add_argument("--start-lr", type=float, default=1e-7)
    finder.add_argument("--end-lr", type=float, default=10.0)
    finder.add_argument("--json", action="store_true", help='print {"lr", "loss", "suggested_lr", "rule"}')
    return parser


def run_lr(args: argparse.Namespace) -> int:
    curve = lr_curve(schedule_from_args(args, args.steps_per_epoch), args.val_loss)
    if args.json:
        print(json.dumps({"lr": curve.lr}))
        return 0
    for note in curve.notes:
        print(note)
    previous = None
    for step, value in enumerate(curve.lr):
        if value != previous:
            print(f"step {step:>7}  epoch {step // args.steps_per_epoch:>5}  lr {value:.6g}")
            previous = value
    print(f"{len(curve.lr)} steps, final lr {curve.lr[-1]:.6g}")
    return 0


class _StopOnInterrupt:
    """The first Ctrl-C asks fit to stop after the current batch (keeping the best model); a second one aborts."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this batch (Ctrl-C again to abort)", file=sys.stderr)

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)

    def __call__(self) -> bool:
        return self.requested


def run_fit(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from trainer.train import fit

    config = train_config_from_args(args)
    bar = None

    def on_batch(event):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=event.batches * config.epochs, unit="batch", dynamic_ncols=True)
        bar.set_description(f"epoch {event.epoch + 1}/{config.epochs}")
        bar.set_postfix(loss=f"{event.loss:.3f}", lr=f"{event.lr:.2e}")
        bar.update()

    def on_epoch(stats):
        tqdm.write(f"epoch {stats.epoch:>3} [{stats.phase}]  train loss {stats.train_loss:.4f} acc {stats.train_acc:.3f}"
                   f"  val loss {stats.val_loss:.4f} acc {stats.val_acc:.3f}  ({stats.seconds:.1f}s)")

    with _StopOnInterrupt() as stop:
        result = fit(args.data, config, args.out, overwrite=args.overwrite, on_batch=on_batch, on_epoch=on_epoch,
                     should_stop=stop, log=tqdm.write)
    if bar is not None:
        bar.close()
    metrics = result.metrics
    print(f"best epoch {metrics['best_epoch']}: val accuracy {metrics['val']['accuracy']:.3f}"
          + (f", test accuracy {metrics['test']['accuracy']:.3f}" if metrics["test"] else "")
          + (f" ({result.stopped})" if result.stopped else ""))
    export = metrics.get("export") or {}
    if export.get("ok") is False:
        print(f"ONNX export failed: {export.get('error')}", file=sys.stderr)
    print(f"run folder: {result.run_dir}")
    return 0


def run_lr_find(args: argparse.Namespace) -> int:
    from trainer.lr_finder import lr_find

    with _StopOnInterrupt() as stop:
        result = lr_find(args.data, train_config_from_args(args), iterations=args.iterations,
                         start_lr=args.start_lr, end_lr=args.end_lr, should_stop=stop)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"suggested lr {result.suggested_lr:.3g} ({result.rule}); swept {len(result.lr)} steps "
              f"from {result.lr[0]:.1e} to {result.lr[-1]:.1e}")
    return 0


COMMANDS = {"lr": run_lr, "fit": run_fit, "lr-find": run_lr_find}


def main(argv: list[str] | None = None) -> int:
    from models.backbones import WeightsUnavailable
    from trainer.data import DataError

    args = get_args_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ScheduleError, ConfigError, DataError, WeightsUnavailable, ValueError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
