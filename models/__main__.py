"""Command line for trained runs: `python -m models export|predict|push|space ...`.

Each subcommand parses its arguments and calls one library function; `predict` never imports torch.
"""

from __future__ import annotations

import argparse
import json
import sys

from models.run_folder import ONNX_VARIANTS


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models", description="Export and serve trained runs.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    export = commands.add_parser("export", help="export a run folder to ONNX and check it against PyTorch")
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=None,
                        help="also write model.fp16.onnx (default: only where ONNX Runtime can use CUDA)")
    export.add_argument("--int8", action=argparse.BooleanOptionalAction, default=None,
                        help="also write model.int8.onnx (static INT8, for CPU; default: yes)")
    export.set_defaults(func=export_command)

    predict = commands.add_parser("predict", help="classify photos with an exported model")
    predict.add_argument("model", metavar="MODEL", help="an .onnx file or a run folder")
    predict.add_argument("images", metavar="IMAGE", nargs="+")
    predict.add_argument("--top-k", type=int, default=5, help="predictions per image (default: 5)")
    predict.add_argument("--json", action="store_true", help="print a JSON array, one entry per image")
    predict.add_argument("--providers", choices=("auto", "cpu", "cuda"), default="auto")
    predict.add_argument("--variant", choices=tuple(ONNX_VARIANTS),
                         help="which of a run folder's exported models (default: the one its export chose)")
    predict.set_defaults(func=predict_command)

    push = commands.add_parser("push", help="push a run to the Hugging Face Hub (token: HF_TOKEN or your login)")
    push.add_argument("run_dir", metavar="RUN_DIR")
    push.add_argument("repo_id", metavar="REPO_ID", help="user/name")
    push.add_argument("--private", action="store_true")
    push.set_defaults(func=push_command)

    space = commands.add_parser("space", help="write (and optionally push) a classify-only Gradio Space for a run")
    space.add_argument("run_dir", metavar="RUN_DIR")
    space.add_argument("dest", metavar="DEST", help="folder to write the Space app into")
    space.add_argument("--push", metavar="REPO_ID", help="also push it as a Space repo user/name")
    space.add_argument("--private", action="store_true")
    space.set_defaults(func=space_command)
    return parser


def push_command(args) -> int:
    from models.hub import HubError, push_run

    try:
        url = push_run(args.run_dir, args.repo_id, private=args.private)
    except HubError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(url)
    return 0


def space_command(args) -> int:
    from models.hub import HubError, make_space, push_space

    try:
        folder = make_space(args.run_dir, args.dest)
        print(f"Space app written to {folder} (run it with: cd {folder} && python app.py)")
        if args.push:
            print(push_space(args.run_dir, args.push, private=args.private))
    except HubError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def export_command(args) -> int:
    from models.export import ExportError, export_run

    try:
        record = export_run(args.run_dir, fp16=args.fp16, int8=True if args.int8 is None else args.int8)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    inputs = record["inputs"]
    print(f"Checked on {inputs['count']} inputs ({inputs['source']}), opset {record['opset']}:")
    for kind, variant in record["variants"].items():
        print(f"  {kind}: {_describe_variant(variant)}")
    print(f"Served by default: {record['served']} (the fastest that passed, within 1 point of fp32's accuracy)")
    # A variant asked for by name that failed is an error; one made by default is only not served.
    asked = [kind for kind in ("fp16", "int8") if getattr(args, kind)]
    return 1 if any(record["variants"][kind]["passed"] is False for kind in asked if kind in record["variants"]) else 0


def _describe_variant(variant: dict) -> str:
    if "max_abs_logit_diff" not in variant:
        state = "not evaluated" if variant["passed"] is None else "FAILED"
        return f"{variant['file']} {state}: {variant['failure']}"
    text = (
        f"{variant['file']} ({variant['size_bytes'] / 1e6:.1f} MB), max |logit diff| vs {variant['reference']} "
        f"{variant['max_abs_logit_diff']:.2g}, top-1 agreement {variant['top1_agreement']:.1%}"
    )
    if "accuracy" in variant:
        text += f", accuracy {variant['accuracy']:.1%}"
    if "accuracy_change" in variant:
        text += f" ({100 * variant['accuracy_change']:+.1f} points)"
    speed = variant.get("speed") or {}
    if "images_per_s" in speed:
        text += f", {speed['images_per_s']:.0f} img/s (batch {speed['batch']}, {speed['provider']})"
    elif "failure" in speed:
        text += f", speed not measured: {speed['failure']}"
    if not variant["passed"]:
        text += f" FAILED, file removed: {variant['failure']}"
    return text


def predict_command(args) -> int:
    from models.runtime import VARIANT_NAMES, ModelLoadError, OnnxClassifier, resolve_model_choice

    try:
        choice = resolve_model_choice(args.model, variant=args.variant)
        results = OnnxClassifier(choice.path, providers=args.providers).predict_files(args.images, top_k=args.top_k)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if choice.variant:  # on stderr: stdout stays one line (or one JSON entry) per image
        how = "the run's default" if choice.variant == choice.default else "as picked"
        print(f"Served by {VARIANT_NAMES[choice.variant]} ({choice.path.name}), {how}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for entry in results:
            if "error" in entry:
                print(f"{entry['path']}: error: {entry['error']}")
            else:
                print(f"{entry['path']}: " + ", ".join(f"{p['label']} {p['score']:.1%}" for p in entry["predictions"]))
    return 1 if any("error" in entry for entry in results) else 0


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
