"""The trainer CLI: `python -m trainer lr|fit|lr-find ...`. Parse, build the config, call one function."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from trainer.config import ConfigError, ScheduleConfig, TrainConfig, choices_of, config_fields, default_of, flag_of
from trainer.schedules import ScheduleError, lr_curve


def _key_value(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--param takes key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # a bare string, e.g. mode=triangular2 or lr_lambda=0.95**epoch
    return key.strip(), value


def add_config_args(parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = ()) -> None:
    """One flag per field of the config dataclass `cls` (nested schedule fields included), from its metadata."""
    for f in config_fields(cls):
        if f.name in exclude:
            continue
        meta, default = f.metadata, default_of(f)
        flag = flag_of(f)
        kwargs: dict = {"dest": f.name, "help": meta.get("help")}
        choices = choices_of(f)
        if isinstance(default, bool):
            kwargs.update(action=argparse.BooleanOptionalAction, default=default)
        elif isinstance(default, dict):  # KEY=VALUE pairs, repeated
            kwargs.update(type=_key_value, action="append", default=[], metavar="KEY=VALUE")
        else:
            kwargs.update(type=type(default), default=default)
            if choices:
                kwargs.update(choices=choices)
                if len(choices) > 6:  # a long list reads better in the help text than in the usage line
                    kwargs.update(metavar="NAME", help=f"{meta.get('help')}: {', '.join(choices)}")
        if not isinstance(default, (bool, dict)):
            kwargs["help"] = f"{kwargs['help']} (default: {default})"
        parser.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace, cls: type, **fixed):
    """The config dataclass `cls` from parsed flags (and `fixed` values the command sets itself)."""
    values = {f.name: getattr(args, f.name) for f in config_fields(cls) if hasattr(args, f.name)}
    for f in config_fields(cls):
        if isinstance(values.get(f.name), list) and isinstance(default_of(f), dict):
            values[f.name] = dict(values[f.name])
    values.update(fixed)
    return cls.from_dict(values)


def add_train_args(parser: argparse.ArgumentParser) -> None:
    """The data argument and every training field (the run derives steps per epoch), shared by `fit` and `lr-find`."""
    parser.add_argument("data", help="a folder of class subfolders (or train/ val/ test/), or a .zip of one")
    add_config_args(parser, TrainConfig, exclude=("steps_per_epoch",))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description="Transfer Studio: schedules and fine-tuning")
    commands = parser.add_subparsers(dest="command", required=True)

    lr = commands.add_parser("lr", help="print the learning rate at every optimizer step of a schedule")
    add_config_args(lr, ScheduleConfig)
    lr.add_argument("--val-loss", type=json.loads, default=None,
                    help="ReduceLROnPlateau: JSON list of per-epoch validation losses (default: a made-up curve)")
    lr.add_argument("--json", action="store_true", help='print {"lr": [...]}')

    fit = commands.add_parser("fit", help="fine-tune a ResNet on a photo folder or zip and write a run folder")
    add_train_args(fit)
    fit.add_argument("--out", required=True, help="run folder to write (must be empty unless --overwrite)")
    fit.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out")

    experiment = commands.add_parser("experiment", help="a tutorial's comparison on your photos: one run per arm, "
                                                        "same split and seed, then the comparison")
    add_train_args(experiment)
    experiment.add_argument("--kind", required=True, choices=tuple(_kinds()),
                            help="; ".join(f"{name}: {kind.question}" for name, kind in _kinds().items()))
    experiment.add_argument("--out", required=True, help="folder for the arms' run folders and report.html "
                                                         "(must be empty unless --overwrite)")
    experiment.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out")

    compare = commands.add_parser("compare", help="compare finished runs: settings that differ, metrics, curves")
    compare.add_argument("runs", nargs="+", metavar="RUN",
                         help="two or more runs: run folders, run zips (as the app's download saves them), or hf://user/name")
    compare.add_argument("--html", metavar="FILE", help="write the comparison as one self-contained HTML file")
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON")

    finder = commands.add_parser("lr-find", help="sweep the LR exponentially and suggest one (fastai's lr_find)")
    add_train_args(finder)
    finder.add_argument("--iterations", type=int, default=100)
    finder.add_argument("--start-lr", type=float, default=1e-7)
    finder.add_argument("--end-lr", type=float, default=10.0)
    finder.add_argument("--json", action="store_true", help='print {"lr", "loss", "suggested_lr", "rule", "clear"}')
    return parser


def run_lr(args: argparse.Namespace) -> int:
    curve = lr_curve(config_from_args(args, ScheduleConfig), args.val_loss)
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
    import torch.distributed as dist

    from trainer.distributed import Terminated, joined

    config = config_from_args(args, TrainConfig)
    with joined(config.device) as world:  # under torchrun: every process trains, the first one reports
        try:
            return _fit_and_report(args, config) if world.main else _fit_quietly(args, config)
        except (Terminated, dist.DistError, RuntimeError) as exc:
            # A process that died (its own traceback says why) shows up in the others as SIGTERM from torchrun
            # or as gloo's "Connection closed by peer" inside a collective; any other RuntimeError is a bug.
            if isinstance(exc, RuntimeError) and not isinstance(exc, dist.DistError) and "peer" not in str(exc):
                raise
            if world.main:
                print("stopped: torchrun ends every process of a training when one fails or on Ctrl-C; "
                      f"nothing was written to {args.out}", file=sys.stderr)
            return 1


def _fit_quietly(args: argparse.Namespace, config: TrainConfig) -> int:
    from trainer.train import fit

    with _StopOnInterrupt() as stop:
        fit(args.data, config, args.out, overwrite=args.overwrite, should_stop=stop)
    return 0


def _fit_and_report(args: argparse.Namespace, config: TrainConfig) -> int:
    from tqdm import tqdm

    from trainer.train import fit

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


def _kinds() -> dict:
    from trainer.experiment import KINDS

    return KINDS


def _print_comparison(comparison) -> None:
    from trainer.compare_report import metrics_frame, settings_frame

    print(comparison.data()["note"])
    settings = settings_frame(comparison)
    if len(settings):
        print("\nSettings that differ:")
        print(settings.to_string(index=False))
    print("\nFinal metrics (differences from the first run):")
    print(metrics_frame(comparison).to_string(index=False))


def _write_report(comparison, path) -> None:
    from pathlib import Path

    from models.atomic import replace_file
    from trainer.compare_report import html_report

    text = html_report(comparison)
    replace_file(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
    print(f"report: {path}")


def run_compare(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from models.run_import import download_run, import_run_zip
    from trainer.compare import compare

    with tempfile.TemporaryDirectory(prefix="compare-") as fetched:
        folders = []
        for index, run in enumerate(args.runs):  # a run zip or a pushed run is unpacked or fetched first
            name = run.removeprefix("hf://").replace("/", "-") if run.startswith("hf://") else Path(run).stem
            dest = Path(fetched) / f"{index}-{name}"  # the comparison falls back on a run's folder name
            if run.startswith("hf://"):
                folders.append(download_run(run, dest))
            elif run.endswith(".zip") and Path(run).is_file():
                folders.append(import_run_zip(run, dest))
            else:
                folders.append(Path(run))
        comparison = compare(folders)
        if args.json:
            print(json.dumps(comparison.to_dict()))
        else:
            _print_comparison(comparison)
        if args.html:
            _write_report(comparison, args.html)
    return 0


def run_experiment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from trainer.compare import compare
    from trainer.experiment import ArmDone, ArmFailed, ArmStarts, SeriesPlanned, arms_for, duration_words
    from trainer.experiment import run_experiment as run_series
    from trainer.train import BatchEvent, EpochStats, prepare_run_dir

    config = config_from_args(args, TrainConfig)
    arms = arms_for(args.kind, config)  # refuse bad settings before the photos are read
    out = prepare_run_dir(args.out, args.overwrite).path
    bar = None

    def emit(event):
        nonlocal bar
        if isinstance(event, SeriesPlanned):
            tqdm.write(f"{len(event.arms)} runs ({', '.join(arm.name for arm in event.arms)}) on {event.train} training "
                       f"and {event.val} validation photos: {duration_words(event.seconds)} on this machine")
        elif isinstance(event, ArmStarts):
            tqdm.write(f"run {event.index} of {event.of}: {event.arm.name}")
            bar = None
        elif isinstance(event, BatchEvent):
            if bar is None:
                bar = tqdm(total=event.batches * config.epochs, unit="batch", dynamic_ncols=True, leave=False)
            bar.update()
        elif isinstance(event, EpochStats):
            tqdm.write(f"  epoch {event.epoch:>3}  val loss {event.val_loss:.4f} acc {event.val_acc:.3f}")
        elif isinstance(event, (ArmDone, ArmFailed)):
            if bar is not None:
                bar.close()
            tqdm.write(f"  {event.arm.name} failed: {event.message}" if isinstance(event, ArmFailed) else
                       f"  {event.arm.name}: val accuracy {event.result.metrics['val']['accuracy']:.3f} "
                       f"-> {event.result.run_dir}")

    with _StopOnInterrupt() as stop:
        done = run_series(args.data, args.kind, config, lambda index, arm: out / f"{index}-{_slug(arm.name)}",
                          workdir=out, emit=emit, should_stop=stop, log=tqdm.write)
    if done.stopped:
        print(f"experiment {done.stopped}: {len(done.run_dirs)} of {len(arms)} runs finished")
    if len(done.run_dirs) >= 2:
        comparison = compare(done.run_dirs)
        _print_comparison(comparison)
        _write_report(comparison, out / "report.html")
    return 0


def _slug(name: str) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run_lr_find(args: argparse.Namespace) -> int:
    from trainer.lr_finder import lr_find

    with _StopOnInterrupt() as stop:
        result = lr_find(args.data, config_from_args(args, TrainConfig), iterations=args.iterations,
                         start_lr=args.start_lr, end_lr=args.end_lr, should_stop=stop)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        if not result.clear:
            print("the loss hardly fell anywhere in the sweep: the suggestion below is a guess; "
                  "try more iterations, another strategy, or check the photos")
        print(f"suggested lr {result.suggested_lr:.3g} ({result.rule}); swept {len(result.lr)} steps "
              f"from {result.lr[0]:.1e} to {result.lr[-1]:.1e}")
    return 0


COMMANDS = {"lr": run_lr, "fit": run_fit, "lr-find": run_lr_find, "compare": run_compare, "experiment": run_experiment}


def main(argv: list[str] | None = None) -> int:
    from models.backbones import WeightsUnavailable
    from models.hub import HubError
    from models.run_folder import RunFolderError
    from trainer.data import DataError

    args = get_args_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ScheduleError, ConfigError, DataError, WeightsUnavailable, RunFolderError, HubError, ValueError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
