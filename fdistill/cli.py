"""The ``fdistill`` command: ``fdistill <subcommand> --help`` for each."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

ALL_SPACES = ("classifier", "classifier_b", "pixels", "sklearn_mlp")
"""``fdistill.eval.ALL_FEATURE_SPACES``, named here so that parsing the command line imports no metrics code."""


def _train_teacher(args: argparse.Namespace) -> None:
    from fdistill.training.teacher import train_teacher_from_cli

    out = train_teacher_from_cli(args.config, args.overrides, args.resume)
    print(f"teacher saved to {out}")


def _distill(args: argparse.Namespace) -> None:
    from fdistill.training.distill import distill_from_cli

    out = distill_from_cli(args.config, args.overrides, args.resume)
    pipeline = out / "pipeline"
    if (pipeline / "model_index.json").is_file():
        print(f"student pipeline saved to {pipeline}")
    else:
        print(f"run saved to {out} (export=false: no pipeline; checkpoints hold the student)")


def _distill_video(args: argparse.Namespace) -> None:
    from fdistill.training.hiar import distill_video_from_cli

    out = distill_video_from_cli(args.config, args.overrides, args.resume)
    saved = next((p for p in (out / "pipeline", out / "hiar_student.safetensors") if p.exists()), None)
    print(f"HiAR student saved to {saved}" if saved else f"run saved to {out} (export=false)")


def _eval_teacher_path(args: argparse.Namespace):
    """The teacher to compare with: ``--teacher``, else the one the run beside the pipeline was distilled from
    (``<pipeline>/../config.yaml``, a teacher asset), else none."""
    from pathlib import Path

    if args.teacher == "none":
        return None
    if args.teacher is not None:
        return Path(args.teacher)
    import yaml

    run_config = Path(args.pipeline).parent / "config.yaml"
    if not run_config.is_file():
        return None
    teacher = (yaml.safe_load(run_config.read_text()) or {}).get("teacher") or {}
    if teacher.get("kind", "asset") != "asset":
        return None
    from fdistill.teachers import DIGITS_TEACHER

    path = Path(teacher.get("path") or DIGITS_TEACHER)
    return path if path.is_file() else None


def _eval(args: argparse.Namespace) -> None:
    import json
    import sys
    from pathlib import Path

    from fdistill.eval.pipeline_eval import evaluate_pipeline, fid_ratios, format_comparison, teacher_reference
    from fdistill.io import atomic_write_text, check_safetensors
    from fdistill.pipelines import FDistillPipeline

    check_safetensors(args.pipeline)
    path = Path(args.pipeline)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{path} is not a pipeline folder (no model_index.json)")
    pipe = FDistillPipeline.from_pretrained(path).to(args.device)
    spaces = list(dict.fromkeys(args.feature_spaces))
    report = evaluate_pipeline(pipe, num_samples=args.num_samples, batch_size=args.batch_size, seeds=args.seeds,
                               inception_weights=args.inception_weights, num_classes=args.num_classes,
                               feature_spaces=spaces)
    report["pipeline"] = str(path)
    teacher_path = _eval_teacher_path(args)
    teacher = None
    if teacher_path is not None:
        teacher, source = teacher_reference(teacher_path, args.num_samples, args.seeds, spaces, args.teacher_steps,
                                            args.batch_size, args.num_classes)
        report["teacher"] = {"source": source, **teacher}
        report["fid_ratio_to_teacher"] = fid_ratios(report, teacher)
    if args.output:
        atomic_write_text(args.output, json.dumps(report, indent=1) + "\n")
    print(format_comparison(report, teacher, "student", f"teacher ({2 * args.teacher_steps - 1} NFE)"))
    if teacher is not None:
        print(f"  teacher reference: {report['teacher']['source']}")
    print(f"  {report['images_per_second']:.0f} images/s (median over seeds)"
          + (f"; report: {args.output}" if args.output else ""))
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)


def _cache(args: argparse.Namespace) -> None:
    from pathlib import Path

    from fdistill.data.captions import image_tensor, read_image_folder, webdataset_samples
    from fdistill.data.latent_cache import write_latent_cache
    from fdistill.families import load_family

    size = None if args.resolution is None else (args.resolution, args.resolution)
    family = load_family(args.teacher, args.device, size)
    channels = family.pipe.vae.config.in_channels
    if Path(args.data).is_dir():
        from PIL import Image

        pairs = read_image_folder(args.data, args.caption_column)

        def samples():
            for path, caption in pairs:
                with Image.open(path) as image:
                    yield image_tensor(image, family.height, channels), caption
    else:  # webdataset shards, read once, in order
        count = args.max_samples

        def samples():
            for i, item in enumerate(webdataset_samples(args.data, family.height, channels, once=True)):
                if count is not None and i >= count:
                    return
                yield item
    out = write_latent_cache(family, samples(), args.output, args.batch_size, args.shard_size, str(args.teacher))
    print(f"latent cache written to {out}: train on it with data.name=cache data.path={out}")


def _plan_memory(args: argparse.Namespace) -> None:
    import json

    from fdistill.memory import GIB, count_parameters, denoiser_on_meta, format_plan, plan_memory

    what, model = denoiser_on_meta(args.teacher)
    rows = plan_memory(model, args.ranks, args.lora_rank)
    print(format_plan(what, count_parameters(model), rows, args.gpu_gib))
    if args.output:
        from fdistill.io import atomic_write_text

        report = {"teacher": what, "parameters": count_parameters(model), "gpu_gib": args.gpu_gib,
                  "rows": [r.as_dict(int(args.gpu_gib * GIB)) for r in rows]}
        atomic_write_text(args.output, json.dumps(report, indent=1) + "\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


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


PHASES = """

A run has three phases; each count is its own setting and `steps` counts only the last:
  1. warm-up: the teacher's ODE pairs (video: trajectories) are made once and cached, then
     `warmup.steps` regression updates of the student on them (0: no warm-up);
  2. critic warm-up: `critic_warmup_steps` updates of the fake score / discriminator alone;
  3. `steps` {main} updates (`critic_steps` critic updates each).
A run of seconds (a smoke test of a config): {quick}"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fdistill", description="f-divergence distillation of diffusion models")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def trainer(name: str, help: str, fn, example: str, overrides: str, config: str, phases: str = "") -> None:
        p = sub.add_parser(name, help=help, config=config, description=f"{help}.{phases}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", help=f"YAML config, e.g. {example}")
        p.add_argument("--resume", default=None,
                       help="'latest' (the newest checkpoint of output_dir) or a checkpoint folder; the run's "
                            "settings must be those of its config.yaml (see resume_changes)")
        p.add_argument("overrides", nargs="*", help=f"dotted overrides, e.g. {overrides}")
        p.set_defaults(fn=fn)

    trainer("train-teacher", "train a diffusion teacher", _train_teacher, "configs/digits_teacher.yaml",
            "steps=200 lr=2e-4", "fdistill.training.teacher:TeacherConfig")
    trainer("distill", "distil a one-step student with an f-divergence", _distill, "configs/digits_js.yaml",
            "steps=200 objective.divergence=forward_kl", "fdistill.training.distill_config:DistillConfig",
            PHASES.format(main="f-distill", quick="steps=2 warmup.steps=0 critic_warmup_steps=0"))
    trainer("distill-video", "distil a few-step causal HiAR video student", _distill_video,
            "configs/moving_digits_hiar.yaml", "steps=100 order=sequential", "fdistill.training.hiar_config:HiARConfig",
            PHASES.format(main="self-rollout distribution-matching",
                          quick="steps=2 warmup.steps=0 critic_warmup_steps=0 trajectories.count=4\n"
                                "(the trajectories are also the forward-KL regulariser's targets: "
                                "regulariser.weight=0 skips them)"))

    p = sub.add_parser("eval", help="FID/KID, precision/recall, density/coverage of an image pipeline, over "
                                    "several sample seeds and feature spaces, next to its teacher",
                       description="Sample an FDistillPipeline (class-conditional digits) at each sample seed and "
                                   "score it against all 1,797 digits in each feature space; every number is the "
                                   "mean ± spread (max − min) over the seeds. The teacher is scored the same way "
                                   "(its recorded reference when one matches the counts, else sampled now).")
    p.add_argument("--pipeline", required=True, help="an FDistillPipeline folder")
    p.add_argument("--num-samples", type=positive_int, default=2000, help="images per seed (>= 1; default 2000)")
    p.add_argument("--batch-size", type=positive_int, default=250, help="images per forward (>= 1; default 250)")
    p.add_argument("--seeds", "--seed", dest="seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="sample seeds (default 0 1 2: the spread over them is the noise a difference must beat)")
    p.add_argument("--feature-spaces", nargs="+", default=list(ALL_SPACES), choices=ALL_SPACES, metavar="SPACE",
                   help=f"feature spaces (default all: {' '.join(ALL_SPACES)}; the last two were not designed by "
                        "fdistill: raw pixels and a scikit-learn network)")
    p.add_argument("--teacher", default=None,
                   help="a teacher asset to compare with (default: the one the run beside the pipeline used, "
                        "read from <pipeline>/../config.yaml; 'none': no teacher)")
    p.add_argument("--teacher-steps", type=positive_int, default=18, help="the teacher's Heun steps (18 = 35 NFE)")
    p.add_argument("--num-classes", type=positive_int, default=10, help="labels sampled: 0 … N-1 (class-conditional)")
    p.add_argument("--inception-weights", default=None, help="local Inception weights file (else digits features)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", default=None, help="write the JSON report here too")
    p.set_defaults(fn=_eval)

    p = sub.add_parser("cache", help="encode captioned images once with a teacher's VAE and text encoders")
    p.add_argument("--teacher", required=True, help="the teacher's diffusers pipeline folder")
    p.add_argument("--data", required=True, help="an image folder (metadata.jsonl or .txt captions) or webdataset "
                                                 "shards, e.g. 'data/shard-{000000..000009}.tar'")
    p.add_argument("--output", required=True, help="the cache folder to write")
    p.add_argument("--resolution", type=int, default=None, help="square size in pixels (default: the pipeline's)")
    p.add_argument("--caption-column", default="text", help="caption column of metadata.jsonl (default text)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=1024, help="samples per cache shard")
    p.add_argument("--max-samples", type=int, default=None, help="stop after this many webdataset samples")
    p.add_argument("--device", default="cpu")
    p.set_defaults(fn=_cache)

    p = sub.add_parser("plan-memory", help="bytes per rank of full / bf16 / LoRA / FSDP distillation of a teacher")
    p.add_argument("--teacher", required=True,
                   help="a diffusers pipeline folder, or one of sd15, sdxl-base, sd3-medium, flux1-dev, pixart-sigma, "
                        "wan2.1-t2v-1.3b, wan2.1-t2v-14b (configs shipped, no weights)")
    p.add_argument("--ranks", type=int, default=8, help="FSDP ranks to shard over (default 8)")
    p.add_argument("--gpu-gib", type=float, default=80.0, help="memory of one GPU, GiB (default 80)")
    p.add_argument("--lora-rank", type=int, default=64, help="rank of the student's and fake score's LoRA (default 64)")
    p.add_argument("--output", default=None, help="write the plan as JSON here too")
    p.set_defaults(fn=_plan_memory)

    from fdistill import video_cli  # argparse only at import; torch loads when a command runs

    video_cli.add_sample_video_arguments(sub.add_parser("sample-video", help="sample a HiAR video pipeline"))
    sub.choices["sample-video"].set_defaults(fn=video_cli.sample_video_main)
    video_cli.add_eval_video_arguments(sub.add_parser("eval-video", help="VBench-style metrics of videos"))
    sub.choices["eval-video"].set_defaults(fn=video_cli.eval_video_main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # dotted overrides may follow options (`--resume latest steps=2`), which argparse's positional
    # nargs="*" would not take once an option has ended it; words without `=` after one are the rest of a
    # value the shell split (`data.prompts=[a cat]`), which the config's override parser names
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and "=" in extra[0] and not any(e.startswith("-") for e in extra):
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
