"""`sdlora` command line. Heavy libraries are imported inside commands, so --help stays fast."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import SdloraError

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdlora",
        description="Train Stable Diffusion LoRAs (SD1.5 / SD2.x) from one config file.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="Train a LoRA from a config file.")
    train.add_argument("config", nargs="?", help="TOML config file (a preset file works too).")
    train.add_argument("--preset", help="Start from presets/NAME.toml; the config file overlays it.")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="Override one option, e.g. --set train.max_steps=200 (repeatable).")
    train.add_argument("--output", type=Path, help="Run folder (default: runs/<output_name>-<time>).")
    train.add_argument("--quiet", action="store_true", help="No progress bar (events.jsonl is still written).")

    tiny = commands.add_parser("make-tiny-model", help="Write a tiny random-weight model (for tests and demos).")
    tiny.add_argument("folder", type=Path)
    tiny.add_argument("--family", default="sd15", choices=("sd15", "sd2-v", "sdxl"))
    tiny.add_argument("--seed", type=int, default=0)

    show = commands.add_parser("config", help="Print the fully resolved config (defaults + preset + file + --set).")
    show.add_argument("config", nargs="?")
    show.add_argument("--preset")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")

    for name, text in (("lint", "Check the dataset of a config (nothing is changed); exit 1 on errors."),
                       ("plan", "Dry run: steps, buckets, captions, tags, LR curve, memory; no model compute.")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("config", nargs="?")
        sub.add_argument("--preset")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
        if name == "plan":
            sub.add_argument("--json", action="store_true", help="Print the plan as JSON (what the UI shows).")

    commands.add_parser("options", help="List every config option with its default, allowed values and help.")
    return parser


def cmd_train(args) -> int:
    from .config import load_config
    from .train.run import default_run_dir, run_training

    if args.config is None and args.preset is None:
        raise SdloraError("sdlora train needs a config file or --preset NAME.")
    cfg = load_config(args.config, args.overrides, args.preset)
    run_dir = args.output or default_run_dir(cfg)
    path = run_training(cfg, run_dir, progress=not args.quiet)
    print(f"adapter: {path}")
    return 0


def cmd_make_tiny_model(args) -> int:
    from .models.tiny import save_tiny_model

    if args.folder.exists() and any(args.folder.iterdir()):
        raise SdloraError(f"{args.folder} exists and is not empty; choose an empty or new folder.")
    save_tiny_model(args.folder, args.family, args.seed)
    print(f"tiny {args.family} model written to {args.folder}")
    return 0


def cmd_config(args) -> int:
    from .config import dump_toml, load_config

    print(dump_toml(load_config(args.config, args.overrides, args.preset)), end="")
    return 0


def _config_for(args):
    from .config import load_config

    if args.config is None and args.preset is None:
        raise SdloraError(f"sdlora {args.command} needs a config file or --preset NAME.")
    return load_config(args.config, args.overrides, args.preset)


def cmd_lint(args) -> int:
    from .data.lint import lint_dataset

    report = lint_dataset(_config_for(args).data)
    print(report.format())
    return 1 if report.errors else 0


def cmd_plan(args) -> int:
    import json

    from .data.plan import format_plan, make_plan

    plan = make_plan(_config_for(args))
    print(json.dumps(plan.to_dict(), indent=2, ensure_ascii=False) if args.json else format_plan(plan))
    return 0


def cmd_options(args) -> int:
    from .config import options

    for info in options():
        allowed = f" choices: {', '.join(map(str, info.choices))}." if info.choices else ""
        bounds = f" range: {info.min}..{info.max}." if info.min is not None else ""
        print(f"{info.key} = {info.default!r}\n    {info.help}{allowed}{bounds}")
    return 0


COMMANDS = {"train": cmd_train, "make-tiny-model": cmd_make_tiny_model, "config": cmd_config, "options": cmd_options,
            "lint": cmd_lint, "plan": cmd_plan}


def quiet_libraries() -> None:
    """Offline-friendly, quiet defaults for the libraries we drive."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        return COMMANDS[args.command](args)
    except SdloraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
