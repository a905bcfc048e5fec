"""Every shell command and Python snippet of README.md, as the suite runs them (tests/test_readme.py).

What counts as a command:
- each line of a fenced ```bash / ```sh / ```shell block (comments stripped, ``\\`` continuations joined);
- each fenced ```python block, as one snippet;
- each inline code span that starts with ``python scripts/``, ``fdistill ``, ``make ``, ``torchrun `` or
  ``scripts/`` and ends in ``.sh …`` (a command quoted in prose).
The same command quoted twice runs once, where it first appears.

Commands run in the README's order in one scratch copy of the checkout (Makefile, pyproject.toml,
configs/, scripts/, fdistill/assets/), so a command may use what an earlier one wrote (``outputs/demo/pipeline``) and
nothing is written into the real checkout's outputs/, runs/, reports/ or fdistill/assets/.

Long commands run as printed with size-reducing arguments appended (``APPENDED``): argparse flags and
fdistill's dotted config overrides both let the last value win, so the printed command's own flags
are still parsed and checked. ``SKIPPED`` lists the commands that cannot run inside the suite, each
with the reason. An entry that matches no README command fails the suite, so the lists cannot go stale.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

SHELL_LANGS = {"bash", "sh", "shell", "console"}
INLINE_PREFIXES = ("python scripts/", "fdistill ", "make ", "torchrun ")

TINY_FAMILY_RUN = ("data.num_samples=4 data.sample_steps=2 warmup.steps=1 warmup.ode_pairs=4 warmup.ode_steps=2 "
                   "warmup.batch_size=2 steps=1 batch_size=2 critic_steps=1 checkpoint_every=10")

# printed command → arguments appended to it (fewer steps, samples, repeats; the CPU for --device cuda)
APPENDED: dict[str, str] = {
    "make demo": "DEMO_ARGS='--num-samples 200 --seeds 0 --teacher-steps 2 steps=2 warmup.steps=2 warmup.ode_pairs=16 warmup.ode_steps=2 critic_warmup_steps=1'",
    "fdistill eval --pipeline outputs/demo/pipeline": "--num-samples 100 --seeds 0 --teacher-steps 2",
    "python scripts/eval_continuation.py --orders hierarchical --threads 1": "--num-clips 4 --frames 4 --threads 1 "
        "--out reports/hiar_continuation_smoke.json",
    # --critic-only takes no names here, and the overrides must not follow a list option
    "python scripts/demo_quality.py": "--critic-only --teacher-steps 2 warmup.steps=2 warmup.ode_pairs=16 "
                                      "warmup.ode_steps=2 critic_warmup_steps=1 steps=2 --work outputs/dq_readme "
                                      "--report reports/demo_quality_smoke.json --num-samples 100 --sample-seeds 0 "
                                      "--runs default",
    "python scripts/hiar_divergences.py --divergences reverse_kl jensen_shannon forward_kl --seeds 0 1":
                                          "--seeds 0 --steps 2 --frames 24 --videos-per-class 1 --work outputs/hstudy_readme "
                                          "--report reports/hiar_divergences_smoke.json warmup.steps=2 "
                                          "trajectories.count=4 trajectories.cache_dir=outputs/hstudy_readme/traj "
                                          "critic_warmup_steps=1 checkpoint_every=1",
    "python scripts/hiar_drift.py --long-frames 1000 --ship fdistill/assets/hiar_student.safetensors":
        "--variants 8:0 8:2 --frames 12 --edge 4 --videos-per-class 1 --long-frames 14 "
        "--output reports/hiar_drift_smoke.json --cache outputs/hiar_drift_readme",
    "python scripts/hiar_drift.py --variants 8:0 8:4 --seed-offset 2 --output reports/hiar_drift_confirm.json":
        "--frames 12 --edge 4 --videos-per-class 1 --output reports/hiar_drift_confirm_smoke.json "
        "--cache outputs/hiar_drift_readme",
    "python scripts/train_t2i_digits.py": "--init outputs/t2i_init_readme --asset outputs/t2i_asset_readme "
                                          "--vae-steps 2 steps=2 warmup_steps=1 batch_size=4 checkpoint_every=1 log_every=1 "
                                          "output_dir=outputs/t2i_teacher_readme",
    "fdistill distill --config configs/t2i_digits_js.yaml": TINY_FAMILY_RUN + " critic_warmup_steps=1",
    "python scripts/t2i_digits_report.py --student outputs/t2i_digits/pipeline":
        "--guidance 1.0 --teacher-steps 2 --sweep-samples 20 --num-samples 20 --batch-size 10 --timing-batch 2 "
        "--timing-repeats 1 --student-seeds 0 --threads 1 --cache outputs/t2i_report_readme "
        "--output reports/t2i_smoke.json --grid reports/t2i_smoke.png",
    "python scripts/bench_scale.py": "--steps 2 --output reports/scale_smoke.json",
    "python scripts/demo_grid.py": "--work outputs/dg_readme --output reports/demo_grid_smoke.json "
                                   "--settings t_shift=-1.0_critic_steps=1 -- --num-samples 100 --seeds 0 "
                                   "--teacher-steps 2 steps=2 warmup.steps=2 warmup.ode_pairs=16 warmup.ode_steps=2 critic_warmup_steps=1",
    "fdistill train-teacher --config configs/digits_teacher.yaml --resume latest":
        "steps=2 batch_size=8 checkpoint_every=1 output_dir=runs/digits_teacher_cli",
    "scripts/train_teachers.sh digits": "steps=2 batch_size=8 checkpoint_every=1 -- --num-samples 20 --steps 2",
    "fdistill distill --config configs/digits_js.yaml objective.divergence=forward_kl steps=400 --resume latest":
        "steps=2 warmup.steps=2 warmup.ode_pairs=16 warmup.ode_steps=2 critic_warmup_steps=1",
    "fdistill eval --pipeline outputs/digits_js/pipeline --num-samples 2000": "--num-samples 100 --seeds 0 "
                                                                             "--teacher-steps 2",
    "fdistill distill teacher.kind=pipeline teacher.path=outputs/tiny/sd3 data.name=teacher_samples "
    "'data.prompts=[a cat, a red car]' output_dir=outputs/sd3_student": TINY_FAMILY_RUN,
    "fdistill distill teacher.kind=pipeline teacher.path=outputs/tiny/dit data.name=teacher_samples "
    "output_dir=outputs/dit_student": TINY_FAMILY_RUN,
    "fdistill distill teacher.kind=pipeline teacher.path=outputs/tiny/sd3 data.name=cache "
    "data.path=outputs/digit_cache student.lora_rank=8 fake_score.lora_rank=8 output_dir=outputs/sd3_lora":
        TINY_FAMILY_RUN,
    "torchrun --standalone --nproc_per_node 2 -m fdistill.cli distill --config configs/digits_js.yaml parallel=fsdp "
    "output_dir=outputs/digits_fsdp": "steps=1 warmup.steps=1 warmup.ode_pairs=8 warmup.ode_steps=2 "
                                      "critic_warmup_steps=1",
    "python scripts/eval_hiar_student.py --student hierarchical_rkl_reg=fdistill/assets/hiar_student.safetensors "
    "--bidirectional-teacher": "--seeds 1 --frames 12 24 --classes 2 --output reports/hiar_student_smoke.json",
    "fdistill distill-video --config configs/moving_digits_hiar.yaml --resume latest":
        "trajectories.count=2 trajectories.steps_per_interval=1 trajectories.batch_size=2 warmup.steps=1 "
        "warmup.batch_size=2 steps=1 batch_size=2 checkpoint_every=1 output_dir=outputs/hiar_student_readme "
        "trajectories.cache_dir=outputs/hiar_trajectories_readme",
    "fdistill distill-video --config configs/moving_digits_hiar.yaml output_dir=runs/hiar_student":
        "trajectories.count=2 trajectories.steps_per_interval=1 trajectories.batch_size=2 warmup.steps=1 "
        "warmup.batch_size=2 steps=1 batch_size=2 checkpoint_every=1 output_dir=outputs/hiar_student_readme2 "
        "trajectories.cache_dir=outputs/hiar_trajectories_readme",
    "torchrun --standalone --nproc_per_node 2 -m fdistill.cli distill --config configs/digits_js.yaml":
        "steps=1 warmup.steps=1 warmup.ode_pairs=8 warmup.ode_steps=2 critic_warmup_steps=1 "
        "output_dir=outputs/digits_js_torchrun",
    "python scripts/eval_hiar_teacher.py": "--num-samples 4 --num-frames 4 --threads 1",
    "python scripts/train_classifier.py --arch resnet --seed 1 --out fdistill/assets/digits_classifier_b.safetensors":
        "--epochs 1 --min-accuracy 0",
    "python scripts/digits_divergences.py":
        "warmup.steps=1 warmup.ode_pairs=8 warmup.ode_steps=2 critic_warmup_steps=1 --steps 1 --num-samples 100 "
        "--teacher-steps 2 --seeds 0 --divergences reverse_kl --report reports/digits_smoke.json",
    "python scripts/digits_mode_recovery.py --drop-mode remove --seeds 0 1 --divergences reverse_kl "
    "jensen_shannon forward_kl --steps 200 --eval-every 50":
        "--num-samples 20 --teacher-steps 2 --steps 2 --eval-every 1 "
        "warmup.steps=2 warmup.ode_pairs=64 warmup.ode_steps=2 critic_warmup_steps=1 batch_size=8 "
        "--work outputs/mr_readme --report reports/mr_smoke.json --divergences reverse_kl --seeds 0",
    "python scripts/digits_mode_recovery.py --seeds 0 1 --divergences reverse_kl jensen_shannon forward_kl "
    "--steps 200 --eval-every 50":
        "--num-samples 20 --teacher-steps 2 --steps 2 --eval-every 1 "
        "warmup.steps=2 warmup.ode_pairs=64 warmup.ode_steps=2 critic_warmup_steps=1 batch_size=8 "
        "--work outputs/mr_readme_replace --report reports/mr_smoke.json --divergences reverse_kl --seeds 0",
    "python scripts/digits_mode_recovery.py --seeds 0 --divergences reverse_kl jensen_shannon forward_kl "
    "--steps 400 --eval-every 200 --report reports/digits_mode_recovery_replace_400.json":
        "--num-samples 20 --teacher-steps 2 --steps 2 --eval-every 1 "
        "warmup.steps=2 warmup.ode_pairs=64 warmup.ode_steps=2 critic_warmup_steps=1 batch_size=8 "
        "--work outputs/mr_readme_replace --report reports/mr_smoke.json --divergences reverse_kl",
    "python scripts/gmm_divergences.py": "--quick --out reports/gmm_quick --divergences reverse_kl,forward_kl "
                                         "--no-diagnostics",
    "python scripts/gmm_narrow_modes.py": "--quick --divergences reverse_kl,forward_kl --settings baseline "
                                          "--out reports/gmm_narrow_quick",
    "python scripts/bench_train_step.py --repeats 3 --steps 10 --threads 1":
        "--repeats 1 --steps 3 --batch-size 4 --divergences reverse_kl jensen_shannon",
    "python scripts/bench_hiar.py": "--repeats 1 --quick",
    "python scripts/bench_video_length.py": "--lengths 12 24 --labels 2 --long 24 --output reports/video_length_smoke.json",
    "python scripts/bench_video_length.py --student --output reports/video_length_student.json":
        "--lengths 12 24 --labels 2 --long 24 --output reports/video_length_student_smoke.json",
    "python scripts/bench_hiar.py --device cuda --model medium --repeats 3": "--device cpu --model small --repeats 1 --quick",
    "python scripts/bench_attention.py --device cuda --repeats 5 --frames 6 12 24 --tokens-per-frame 256":
        "--device cpu --repeats 1 --frames 2 --heads 2 --head-dim 16 --tokens-per-frame 8 --frames-per-block 1 "
        "--window 2",
    "python scripts/bench_attention.py --device cpu --threads 1 --repeats 5 --frames 6 12 --heads 4 --head-dim 32 "
    "--output reports/attention_bench_cpu.json":
        "--repeats 1 --frames 2 --heads 2 --head-dim 16 --tokens-per-frame 8 --frames-per-block 1 --window 2",
    "python scripts/bench_attention.py --device cuda --output reports/attention_bench_h100_triton.json":
        "--device cpu --smoke",
    "scripts/train_teachers.sh moving_digits":
        "steps=1 batch_size=2 checkpoint_every=1 num_threads=1 -- --num-samples 10 --steps 2 --threads 1",
    "fdistill train-teacher --config configs/moving_digits_teacher.yaml":
        "steps=1 batch_size=2 checkpoint_every=1 num_threads=1",
    "python scripts/eval_teacher.py moving_digits --run runs/moving_digits_teacher --export":
        "--num-samples 10 --steps 2 --threads 1",
}

# printed command → why the suite does not run it
SKIPPED: dict[str, str] = {
    "make test": "it is this suite",
    "torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint head-node:29500 --rdzv_id distill1 "
    "-m fdistill.cli distill --config my_flux.yaml parallel=fsdp": "needs two machines with 8 GPUs each",
    "python scripts/eval_hiar_student.py --student hierarchical_rkl_reg=fdistill/assets/hiar_student.safetensors "
    "--student sequential_rkl_reg=runs/hiar_sequential/hiar_student.safetensors "
    "--student hierarchical_rkl_no_reg=runs/hiar_noreg/hiar_student.safetensors "
    "--student hierarchical_js_reg=runs/hiar_js/hiar_student.safetensors --bidirectional-teacher":
        "needs the three comparison students (about an hour of CPU training each, not shipped); the same script "
        "runs above on the shipped student",
}


@dataclass(frozen=True)
class Command:
    """One README command: ``kind`` "shell" or "python", the ``text`` as printed, its README ``line``."""

    kind: str
    text: str
    line: int
    doc: str = "README.md"


FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
INLINE = re.compile(r"`([^`]+)`")


def _shell_lines(block: list[str]) -> list[tuple[int, str]]:
    """(offset, command) per logical line of a shell block: comments dropped, continuations joined."""
    out, pending, start = [], "", 0
    for i, raw in enumerate(block):
        line = raw.rstrip()
        if not pending:
            start = i
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        words = shlex.split(text, comments=True)
        if words:
            out.append((start, shlex.join(words)))
    return out


def _is_inline_command(span: str) -> bool:
    if span.startswith(INLINE_PREFIXES):
        return True
    first = span.split()[0] if span.split() else ""
    return first.startswith("scripts/") and first.endswith(".sh")


def _inline_commands(lines: list[str], first_line: int) -> list[Command]:
    """Commands quoted in prose; a code span may wrap onto the next line."""
    text = "\n".join(lines)
    out = []
    for m in INLINE.finditer(text):
        span = " ".join(m.group(1).split())
        if span and _is_inline_command(span):
            line = first_line + text.count("\n", 0, m.start())
            out.append(Command("shell", shlex.join(shlex.split(span, comments=True)), line))
    return out


def _doc_commands(readme: Path) -> list[Command]:
    """The README's commands in order of first appearance (duplicates dropped)."""
    lines = readme.read_text().splitlines()
    commands: list[Command] = []
    prose_start, i = 0, 0
    while i <= len(lines):
        fence = FENCE.match(lines[i]) if i < len(lines) else None
        if fence or i == len(lines):
            commands += _inline_commands(lines[prose_start:i], prose_start + 1)
        if i == len(lines):
            break
        if fence:
            lang, body_start = fence.group(2).lower(), i + 1
            j = body_start
            while j < len(lines) and not FENCE.match(lines[j]):
                j += 1
            block = lines[body_start:j]
            if lang in SHELL_LANGS:
                commands += [Command("shell", text, body_start + k + 1) for k, text in _shell_lines(block)]
            elif lang == "python":
                commands.append(Command("python", "\n".join(block) + "\n", body_start + 1))
            i = prose_start = j + 1
            continue
        i += 1
    return commands


def readme_commands(*docs: Path) -> list[Command]:
    """The commands of ``docs`` in order (README.md, then the pages it links), each run once where it first
    appears."""
    commands = [replace(c, doc=doc.name) for doc in docs for c in _doc_commands(doc)]
    seen: set[str] = set()
    unique = []
    for c in commands:
        if c.text not in seen:
            seen.add(c.text)
            unique.append(c)
    return unique


def as_run(command: Command) -> str | None:
    """The shell text the suite runs for a shell command (None: skipped)."""
    if command.text in SKIPPED:
        return None
    extra = APPENDED.get(command.text)
    return command.text if extra is None else f"{command.text} {extra}"
