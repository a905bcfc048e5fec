"""The ``fdistill`` command: ``fdistill <subcommand> --help`` for each."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence


def _train_teacher(args: argparse.Namespace) -> None:
    from fdistill.training.teacher import train_teacher_from_cli

    out = train_teacher_from_cli(args.config, args.overrides, args.resume)
    print(f"teacher saved to {out}")


def _distill(args: argparse.Namespace) -> None:
    from fdistill.training.distill import distill_from_cli

    out = distill_from_cli(args.config, args.overrides, args.resume)
    print(f"student saved to {out}")


def _distill_video(args: argparse.Namespace) -> None:
    from fdistill.training.hiar import distill_video_from_cli

    out = distill_video_from_cli(args.config, args.overrides, args.resume)
    print(f"HiAR student saved to {out}")


def _eval(args: argparse.Namespace) -> None:
    import json

    from fdistill.eval.pipeline_eval import evaluate_pipeline

    report = evaluate_pipeline(args.pipeline, num_samples=args.num_samples, batch_size=args.batch_size,
                               seed=args.seed, inception_weights=args.inception_weights, device=args.device,
                               num_classes=args.num_classes)
    text = json.dumps(report, indent=1)
    if args.output:
        from pathlib import Path

        Path(args.output).write_text(text + "\n")
    print(text)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help ends with the keys of a typed config (``"module:Class"``).

    The config's module is imported only when the help is shown, so parsing stays light.
    """

    def __init__(self, *args, config: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config = config

    def format_help(self) -> str:
        text = super().format_help()
        if self.config is None:
            return text
        from fdistill.training.config import describe_config

        module, name = self.config.split(":")
        keys = describe_config(getattr(importlib.import_module(module), name))
        return f"{text}\nconfig keys (in the --config YAML or as key=value overrides; type = default):\n{keys}\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fdistill", description="f-divergence distillation of diffusion models")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def trainer(name: str, help: str, fn, example: str, config: str) -> None:
        p = sub.add_parser(name, help=help, config=config)
        p.add_argument("--config", help=f"YAML config, e.g. {example}")
        p.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. steps=200 objective.divergence=fkl")
        p.set_defaults(fn=fn)

    trainer("train-teacher", "train a diffusion teacher", _train_teacher, "configs/digits_teacher.yaml",
            "fdistill.training.teacher:TeacherConfig")
    trainer("distill", "distil a one-step student with an f-divergence", _distill, "configs/digits_js.yaml",
            "fdistill.training.distill_config:DistillConfig")
    trainer("distill-video", "distil a few-step causal HiAR video student", _distill_video,
            "configs/moving_digits_hiar.yaml", "fdistill.training.hiar_config:HiARConfig")

    p = sub.add_parser("eval", help="FID/KID, precision/recall and class coverage of a pipeline")
    p.add_argument("--pipeline", required=True, help="an FDistillPipeline folder")
    p.add_argument("--num-samples", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-classes", type=int, default=10, help="labels sampled: 0 … N-1 (class-conditional)")
    p.add_argument("--inception-weights", default=None, help="local Inception weights file (else digits features)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", default=None, help="write the JSON report here too")
    p.set_defaults(fn=_eval)

    from fdistill import video_cli  # argparse only at import; torch loads when a command runs

    video_cli.add_sample_video_arguments(sub.add_parser("sample-video", help="sample a HiAR video pipeline"))
    sub.choices["sample-video"].set_defaults(fn=video_cli.sample_video_main)
    video_cli.add_eval_video_arguments(sub.add_parser("eval-video", help="VBench-style metrics of videos"))
    sub.choices["eval-video"].set_defaults(fn=video_cli.eval_video_main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # dotted overrides may follow options (`--resume latest steps=2`), which argparse's positional
    # nargs="*" would not take once an option has ended it
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    ok = False
    try:
        args.fn(args)
        ok = True
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"fdistill {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        if "torch.distributed" in sys.modules:  # under torchrun: leave no process group to the exit
            from fdistill.training.distributed import end_process_group

            end_process_group(success=ok)
    return 0


if __name__ == "__main__":
    sys.exit(main())
