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
        description="Train Stable Diffusion LoRAs (SD1.5 / SD2.x) from one config file, or open the web UI.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_config_commands(commands)
    _add_file_commands(commands)
    _add_blend_commands(commands)
    ui = commands.add_parser("ui", help="Open the web UI (the built-in demo project unless --project).")
    ui.add_argument("--project", type=Path, help="Project folder (created from the sd15-character preset when new); default: the demo project.")
    ui.add_argument("--host", default="127.0.0.1", help="Address to bind (default 127.0.0.1: this machine only).")
    ui.add_argument("--port", type=int, default=7860)
    ui.add_argument("--auth", metavar="USER:PASSWORD", help="Require this login (use it when binding beyond localhost).")
    commands.add_parser("options", help="List every config option with its default, allowed values and help.")
    return parser


def _add_config_arguments(sub) -> None:
    sub.add_argument("config", nargs="?", help="TOML config file (a preset file works too).")
    sub.add_argument("--preset", help="Start from presets/NAME.toml; the config file overlays it.")
    sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="Override one option, e.g. --set train.max_steps=200 (repeatable).")


def _add_config_commands(commands) -> None:
    """Commands over a training config: train, lint, plan, config."""
    train = commands.add_parser("train", help="Train a LoRA from a config file.")
    _add_config_arguments(train)
    train.add_argument("--output", type=Path, help="Run folder (default: runs/<output_name>-<time>).")
    train.add_argument("--quiet", action="store_true", help="No progress bar (events.jsonl is still written).")
    train.add_argument("--resume", nargs="?", const="latest", metavar="latest|PATH",
                       help="Go on exactly where a run stopped: 'latest' state of the --output folder (the default), "
                            "a run folder, or a state folder <run>/state/step-NNNNNN. Without a config file the "
                            "run's own config.toml is used.")
    for name, text in (("lint", "Check the dataset of a config (nothing is changed); exit 1 on errors."),
                       ("plan", "Dry run: steps, buckets, captions, tags, LR curve, memory; no model compute."),
                       ("config", "Print the fully resolved config (defaults + preset + file + --set).")):
        sub = commands.add_parser(name, help=text)
        _add_config_arguments(sub)
        if name == "plan":
            sub.add_argument("--json", action="store_true", help="Print the plan as JSON (what the UI shows).")


def _add_file_commands(commands) -> None:
    """Commands over model and LoRA files: sample, export, check, convert, make-tiny-model."""
    sample = commands.add_parser("sample", help="Render a saved adapter at several strengths as one grid.")
    sample.add_argument("adapter", type=Path)
    sample.add_argument("--prompt", action="append", required=True,
                        help="Prompt (repeatable); may end with --n/--s/--l/--d/--w/--h/--sampler options, quoted.")
    sample.add_argument("--base", help="Base model (default: the one named in the adapter's metadata).")
    sample.add_argument("--strengths", default="0,0.5,1", help="Comma-separated LoRA strengths (default 0,0.5,1).")
    sample.add_argument("--steps", type=int, default=20)
    sample.add_argument("--guidance", type=float, default=7.5)
    sample.add_argument("--seed", type=int, default=1234)
    sample.add_argument("--size", type=int, default=512)
    sample.add_argument("-o", "--output", type=Path, required=True, help="Grid PNG to write (must not exist).")

    export = commands.add_parser("export", help="Convert a LoRA file (any kohya/diffusers/PEFT layout) and check it.")
    export.add_argument("adapter", type=Path, help="LoRA .safetensors file to read.")
    export.add_argument("--format", default="kohya", choices=("kohya", "diffusers"),
                        help="Key layout to write: kohya (A1111/Forge/ComfyUI/diffusers) or diffusers.")
    export.add_argument("--dtype", default="fp16", choices=("fp32", "fp16", "bf16"), help="Tensor precision.")
    export.add_argument("-o", "--output", type=Path, required=True, help="File to write (.safetensors).")
    _add_model_arguments(export)
    check = commands.add_parser("check", help="Check that a LoRA file loads completely in diffusers and A1111.")
    check.add_argument("file", type=Path)
    _add_model_arguments(check)
    _add_convert_command(commands)

    tiny = commands.add_parser("make-tiny-model", help="Write a tiny random-weight model (for tests and demos).")
    tiny.add_argument("folder", type=Path)
    tiny.add_argument("--family", default="sd15", choices=("sd15", "sd2-v", "sdxl"))
    tiny.add_argument("--seed", type=int, default=0)


def _add_convert_command(commands) -> None:
    convert = commands.add_parser(
        "convert", help="Convert a base model: diffusers folder <-> single-file .safetensors (original A1111 layout)."
    )
    convert.add_argument("model", help="Diffusers folder, builtin:NAME, or single-file checkpoint (.safetensors/.ckpt).")
    convert.add_argument("-o", "--output", type=Path, required=True,
                         help="OUT.safetensors writes one original-layout file; any other name a diffusers folder.")
    convert.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="Cast the weights (default: keep).")
    convert.add_argument("--family", choices=("sd15", "sd2", "sd2-v", "sdxl"),
                         help="Family when reading a single file (default: from its keys and metadata).")
    convert.add_argument("--prediction-type", choices=("epsilon", "v_prediction"),
                         help="For an SD2 file that does not say (default: v_prediction, as diffusers).")
    convert.add_argument("--allow-pickle", action="store_true",
                         help="Read a pickle .ckpt (weights only); write it as .safetensors to stop needing this.")


def _add_model_arguments(command) -> None:
    command.add_argument("--base", help="Base model (diffusers folder, .safetensors checkpoint or builtin:NAME) whose layer names to check "
                         "against; default: the real architecture of the file's family.")
    command.add_argument("--family", choices=("sd15", "sd2", "sd2-v", "sdxl"),
                         help="Model family when the file does not say (no metadata).")


SOURCE_HELP = ("LoRA file and its weight, PATH:WEIGHT (e.g. style.safetensors:0.7; negative weights subtract), "
               "optionally PATH:WEIGHT:BLOCKS with A1111 block weights (SD1/SD2: 17 or 26 numbers, "
               "SDXL: 12 or 20, BASE first), e.g. a.safetensors:1:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1.")


def _add_blend_commands(commands) -> None:
    blend = commands.add_parser("blend", help="Blend several LoRAs with weights into one LoRA file.",
                                description="Weighted blend of LoRAs of one model family. concat is exact "
                                "(rank = sum of ranks); svd re-factors each layer to --rank and reports the error.")
    blend.add_argument("sources", nargs="+", metavar="PATH:WEIGHT", help=SOURCE_HELP)
    blend.add_argument("--method", default="concat", choices=("concat", "svd"),
                       help="concat: exact, rank = sum of input ranks; svd: rank --rank, approximate (error reported).")
    blend.add_argument("--rank", type=int, help="svd: rank of each re-factored layer.")
    blend.add_argument("--conv-rank", type=int, help="svd: rank of 3x3 conv (LoCon) layers (default --rank).")
    blend.add_argument("--format", default="kohya", choices=("kohya", "diffusers"), help="Key layout to write.")
    blend.add_argument("--dtype", default="fp16", choices=("fp32", "fp16", "bf16"), help="Tensor precision.")
    blend.add_argument("-o", "--output", type=Path, required=True, help="File to write (.safetensors).")
    _add_model_arguments(blend)

    bake = commands.add_parser("bake", help="Merge a weighted LoRA blend into a base model (folder or single file).",
                               description="Writes BASE with W += sum of weighted LoRA deltas: a new diffusers "
                               "folder, or with -o NAME.safetensors one checkpoint in the original (LDM) layout "
                               "that A1111, Forge and ComfyUI load.")
    bake.add_argument("base", help="Base model: diffusers folder, builtin:NAME or a cached hub id.")
    bake.add_argument("sources", nargs="+", metavar="PATH:WEIGHT", help=SOURCE_HELP)
    bake.add_argument("-o", "--output", type=Path, required=True,
                      help="New folder (diffusers) or NAME.safetensors (single file) to write the baked model to.")


def cmd_blend(args) -> int:
    from .blend.files import write_blend_file
    from .blend.merge import blend
    from .blend.sources import read_blend_inputs
    from .export.convert import shape_for_base

    if args.method == "concat" and (args.rank or args.conv_rank):
        raise SdloraError("--rank/--conv-rank apply to --method svd only; concat keeps every input's rank.")
    shape = shape_for_base(args.base, args.family)
    inputs = read_blend_inputs(args.sources, shape, args.family)
    result = blend(inputs, args.method, args.rank, args.conv_rank, shape)
    report = write_blend_file(result, inputs, args.output, shape, args.format, args.dtype, args.rank, args.conv_rank)
    print(result.text())
    print(report.text())
    return 0 if report.ok else 1


def cmd_bake(args) -> int:
    from .blend.bake import bake
    from .blend.sources import read_blend_inputs
    from .export.convert import shape_for_base

    inputs = read_blend_inputs(args.sources, shape_for_base(args.base))
    print(bake(args.base, inputs, args.output).text())
    return 0


def cmd_export(args) -> int:
    from .export.convert import export_lora_file

    report = export_lora_file(args.adapter, args.output, args.format, args.dtype, args.base, args.family)
    print(report.text())
    return 0 if report.ok else 1


def cmd_check(args) -> int:
    from .export.check import check_lora_file
    from .export.convert import shape_for_base

    report = check_lora_file(args.file, shape_for_base(args.base, args.family), args.family)
    print(report.text())
    return 0 if report.ok else 1


def cmd_convert(args) -> int:
    from .models.single_file.convert import convert_model

    print(convert_model(args.model, args.output, args.dtype, args.family, args.prediction_type, args.allow_pickle))
    return 0


def cmd_train(args) -> int:
    from .config import load_config
    from .train.run import default_run_dir, run_training

    if args.resume is not None:
        from .train.run import resolve_resume

        run_dir, state = resolve_resume(args.resume, args.output)
        if args.config is None and args.preset is None:
            cfg = load_config(run_dir / "config.toml", args.overrides)
        else:
            cfg = load_config(args.config, args.overrides, args.preset)
        path = run_training(cfg, run_dir, progress=not args.quiet, resume=True, resume_state=state)
        print(f"adapter: {path}")
        return 0
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
    from .data.dreambooth import effective_data_config
    from .data.lint import lint_dataset

    report = lint_dataset(effective_data_config(_config_for(args)))
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


def cmd_sample(args) -> int:
    from .config.schema import SampleSection
    from .sample import adapter_base_model, parse_prompts, render_strength_sweep, save_png

    if args.output.exists():
        raise SdloraError(f"{args.output} already exists; choose another output name (sdlora never overwrites).")
    if not args.adapter.is_file():
        raise SdloraError(f"Adapter file not found: {args.adapter}")
    try:
        strengths = [float(s) for s in args.strengths.split(",") if s.strip()]
    except ValueError:
        raise SdloraError(f"--strengths {args.strengths!r} must be comma-separated numbers, e.g. 0,0.5,1.") from None
    base = args.base or adapter_base_model(args.adapter)
    if not base:
        raise SdloraError("The adapter's metadata names no base model; pass --base MODEL.")
    section = SampleSection(prompts=args.prompt, steps=args.steps, guidance_scale=args.guidance, seed=args.seed)
    previews = parse_prompts(section, args.size)
    grid = render_strength_sweep(base, args.adapter, previews, strengths)
    save_png(grid, args.output, {"adapter": str(args.adapter), "base": base, "strengths": strengths,
                                 "prompts": [p.settings() for p in previews]})
    print(f"grid ({len(previews)} prompt(s) x strengths {strengths}) written to {args.output}")
    return 0


def cmd_ui(args) -> int:
    import importlib

    # The CLI dispatches to the UI package; the core library never depends on it.
    return importlib.import_module("ui.launch").main(args)


COMMANDS = {
    "train": cmd_train,
    "ui": cmd_ui,
    "sample": cmd_sample,
    "make-tiny-model": cmd_make_tiny_model,
    "config": cmd_config,
    "options": cmd_options,
    "export": cmd_export,
    "check": cmd_check,
    "lint": cmd_lint,
    "plan": cmd_plan,
    "convert": cmd_convert,
    "blend": cmd_blend,
    "bake": cmd_bake,
}


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
