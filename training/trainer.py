"""One training loop for every method: the machinery lives here, the losses live in the methods.

A :class:`Method` owns what its paper section describes: the modules it trains, one optimiser per
group of them, and the updates of each step (``updates(step)``: e.g. 4 critic updates, then one
generator update). :func:`train` owns everything else, the same way for every method:

- distribution: ``accelerator.prepare`` on the trained modules and the optimisers, so one process,
  DDP (``torchrun`` / ``accelerate launch``; gloo on CPU, NCCL on GPU) and FSDP
  (``accelerate launch --config_file configs/accelerate_fsdp.yaml``) come from accelerate;
- randomness: update ``k`` of step ``s`` draws from one generator seeded by :func:`step_seed`
  (seed, s, k). Every process draws the whole global batch and keeps its own rows
  (:class:`Draw`), so a run's samples do not depend on how many processes or micro-batches share it;
- gradient accumulation (``no_sync`` on all but the last micro-batch), mixed precision
  (``accelerator.autocast``), gradient clipping, EMA, learning-rate schedules;
- logs: losses stay on the device and are reduced (mean over steps and processes) every
  ``log_every`` steps into ``metrics.jsonl`` (+ TensorBoard when installed) — no host sync per step;
- atomic checkpoints and ``--resume latest``, bit-exact: a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import load_checkpoint, resolve_resume, save_checkpoint, truncate_metrics
from .config import config_changes, save_config
from .distributed import make_accelerator

Logs = dict[str, Tensor]


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """The seed of update ``stream`` of step ``step``: the one formula every method draws from."""
    return (seed * 1_000_003 + step) * 1_009 + stream


class Draw:
    """Random draws of one update's global batch; each call returns this shard's rows, on ``device``.

    Every shard draws the full batch from the same generator (so the generator advances identically
    everywhere) and keeps rows ``[shard·n/shards, (shard+1)·n/shards)``: process p of P in
    micro-batch m of M is shard m·P + p of M·P.
    """

    def __init__(self, generator: torch.Generator, batch: int, shard: int, shards: int, device: torch.device):
        self.generator, self.batch, self.shard, self.shards, self.device = generator, batch, shard, shards, device

    def local(self, n: int | None = None) -> int:
        """Rows of this shard for a global batch of ``n`` (default: the update's batch)."""
        n = self.batch if n is None else n
        if n % self.shards:
            raise ValueError(f"global batch {n} does not split into {self.shards} equal shards "
                             "(processes × gradient_accumulation_steps); pick a multiple")
        return n // self.shards

    def take(self, x: Any, n: int) -> Any:
        if isinstance(x, tuple):
            return tuple(self.take(v, n) for v in x)
        if x is None:
            return None
        k = self.local(n)
        return x[self.shard * k:(self.shard + 1) * k].to(self.device)

    def __call__(self, fn: Callable[[int, torch.Generator], Any], n: int | None = None) -> Any:
        """``fn(n, generator)`` → tensor(s) with ``n`` rows; returns this shard's rows."""
        n = self.batch if n is None else n
        return self.take(fn(n, self.generator), n)

    def randn(self, *shape: int, n: int | None = None) -> Tensor:
        return self(lambda b, g: torch.randn(b, *shape, generator=g), n)

    def stream(self, fn: Callable[[int], Any], n: int | None = None) -> Any:
        """``fn(rows)``: this shard's rows from a source that serves each rank its own (a stream split over the
        ranks), on ``device``."""
        out = fn(self.local(n))
        return tuple(x.to(self.device) for x in out) if isinstance(out, tuple) else out.to(self.device)


@dataclass
class Update:
    """One optimiser step: ``loss(draw) -> (loss, logs)`` on a global batch of ``batch`` samples.

    ``name`` labels errors ("non-finite critic loss at step 7") and the ``grad_norm_<name>`` log;
    ``optimizer`` names an entry of :attr:`Method.optimizers`.
    """

    name: str
    optimizer: str
    loss: Callable[[Draw], tuple[Tensor, Logs]]
    batch: int


def trainable(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``module`` that train (a LoRA view of a frozen base: its adapters only); EMA averages
    these and checkpoints hold these, in this order."""
    return [p for p in module.parameters() if p.requires_grad]


class TrainedState:
    """A trained module's checkpoint state: its trainable parameters and its buffers, not the frozen weights it
    shares with the teacher (those never change and would be written again in every checkpoint)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def _frozen(self) -> set[str]:
        return {n for n, p in self.module.named_parameters() if not p.requires_grad}

    def state_dict(self) -> dict[str, Tensor]:
        frozen = self._frozen()
        return {k: v for k, v in self.module.state_dict().items() if k not in frozen}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing, unexpected = self.module.load_state_dict(state, strict=False)
        if unexpected or set(missing) - self._frozen():
            raise RuntimeError(f"checkpoint state does not fit {type(self.module).__name__}: missing "
                               f"{sorted(set(missing) - self._frozen())[:5]}, unexpected {sorted(unexpected)[:5]}")


class EMASettings:
    """An EMA's checkpoint state without its weights (its step count sets its decay); under FSDP the shadow
    weights are sharded and written by every rank."""

    def __init__(self, ema):
        self.ema = ema

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.ema.state_dict().items() if k != "shadow_params"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self.ema, k, v)


@dataclass(frozen=True)
class Phase:
    """``steps`` consecutive steps that run the same ``updates`` (e.g. "warmup": one regression update;
    "distill": ``critic_steps`` critic updates, then one generator update)."""

    name: str
    steps: int
    updates: tuple[Update, ...]

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"phase {self.name!r}: steps must be >= 0, got {self.steps}")


class Method:
    """A training method: its modules, optimisers, phases and outputs (see the module docstring).

    Subclasses set in ``__init__``: ``modules`` (name → trained ``nn.Module``), ``optimizers``
    (name → optimiser over some of their parameters), ``phases`` (the :class:`Phase` ladder, in order),
    optionally ``schedulers`` (name → LR scheduler, stepped after that optimiser), ``ema`` (checkpoint
    name → module name, averaged at the loop's decay) and ``states`` (extra checkpointed objects with
    ``state_dict``). The trainer replaces ``modules`` and ``optimizers`` entries by their prepared
    (DDP/FSDP) versions, then calls :meth:`prepared`; losses must use ``self.modules[...]`` from then on.
    The step count, the phase of a step and its updates all follow from ``phases``.
    """

    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    phases: list[Phase]
    schedulers: dict[str, Any]
    ema: dict[str, str]
    states: dict[str, Any]
    output_dir: Path | None = None  # set by :func:`train`

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)

    def phase_at(self, step: int) -> Phase:
        """The phase that step ``step`` (0-based) belongs to."""
        for p in self.phases:
            if step < p.steps:
                return p
            step -= p.steps
        raise IndexError(f"step {step} is past the last phase ({self.total_steps} steps)")

    def phase(self, step: int) -> str:
        return self.phase_at(step).name

    def updates(self, step: int) -> list[Update]:
        return list(self.phase_at(step).updates)

    def prepared(self) -> None:
        """Called once the modules are prepared (build what holds them here)."""

    def before_update(self, update: Update) -> None:
        """Called before each update's micro-batches (e.g. to refresh something the update reads)."""

    def start(self, step: int, output_dir: Path, is_main: bool) -> None:
        """Called before the first step (after a resume, with its step): load data, cache pairs."""

    def on_log(self, record: dict[str, Any], ema: dict[str, Any]) -> None:
        """Called with each reduced log record (every ``log_every`` steps), e.g. to evaluate."""

    def finish(self, output_dir: Path, ema: dict[str, Any]) -> None:
        """Called on the main process after the last step: export what the method produces."""


PRECISIONS = ("no", "fp16", "bf16")
PARALLEL = ("ddp", "fsdp")


@dataclass
class LoopConfig:
    """The loop's settings, shared by every method's config (which subclasses it).

    ``batch_size`` is the global batch of one update: it is split over processes and
    ``gradient_accumulation_steps`` micro-batches, so results do not depend on that split.

    An update whose loss or gradient is not finite is skipped (the weights and the optimiser state keep
    their values, the log counts ``skipped_<update>``); more than ``max_bad_updates`` of them in a row stop
    the run with the last good checkpoint in place (0: stop at the first). ``dist_timeout_s``: how long a
    rank waits for the others in a collective before the job ends with an error (a dead rank).

    ``steps``: the steps of the method's last phase (its distillation or training steps), >= 0. 0 leaves
    the earlier phases, e.g. a warm-up-only distillation (``warmup.steps`` > 0); a method refuses a run of no
    step at all.

    A resume (``--resume``) continues the run its ``output_dir/config.yaml`` describes: settings that differ
    from that file stop it, naming each key and both values, except the ``RESUMABLE`` keys, which say how
    long the run is and how it is logged and saved, not what it computes (``steps`` grows to extend a
    run). ``resume_changes=true`` takes the new settings from the checkpoint's step s on; the settings
    the run had until then are kept as ``config-<s>.yaml`` beside the new ``config.yaml``.
    """

    RESUMABLE = ("steps", "checkpoint_every", "checkpoints_to_keep", "log_every", "progress", "num_threads",
                 "max_bad_updates", "dist_timeout_s", "export", "output_dir", "resume_changes")

    steps: int = 1000
    batch_size: int = 64
    ema_decay: float = 0.999
    mixed_precision: str = "no"
    gradient_accumulation_steps: int = 1
    checkpoint_every: int = 200
    checkpoints_to_keep: int = 2
    log_every: int = 10
    output_dir: str = "outputs/run"
    seed: int = 0
    num_threads: int = 0
    progress: bool = True
    parallel: str = "ddp"
    max_bad_updates: int = 0
    dist_timeout_s: float = 600.0
    resume_changes: bool = False

    def __post_init__(self):
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision {self.mixed_precision!r} is not one of {PRECISIONS}")
        if self.parallel not in PARALLEL:
            raise ValueError(f"parallel {self.parallel!r} is not one of {PARALLEL}")
        if self.max_bad_updates < 0 or not self.dist_timeout_s > 0:
            raise ValueError(f"need max_bad_updates >= 0 and dist_timeout_s > 0, got {self.max_bad_updates}, "
                             f"{self.dist_timeout_s}")
        for name in ("steps", "batch_size", "gradient_accumulation_steps", "checkpoint_every", "log_every"):
            if getattr(self, name) < (0 if name == "steps" else 1):
                raise ValueError(f"{name} must be >= {0 if name == 'steps' else 1}, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.batch_size % self.gradient_accumulation_steps:
            raise ValueError(f"batch_size {self.batch_size} (the global batch) does not split into "
                             f"gradient_accumulation_steps={self.gradient_accumulation_steps} equal micro-batches")


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(path))


class _Window:
    """Per-update logs summed on the device between two log lines."""

    def __init__(self):
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.steps, self.tic = 0, time.perf_counter()

    def add(self, logs: Logs) -> None:
        for k, v in logs.items():
            v = v.detach().float().mean()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
            self.counts[k] = self.counts.get(k, 0) + 1

    def record(self, accelerator) -> dict[str, float]:
        keys = sorted(self.sums)
        values = torch.stack([self.sums[k] / self.counts[k] for k in keys]) if keys else torch.zeros(0)
        values = accelerator.reduce(values.to(accelerator.device), "mean").tolist() if keys else []
        rec = dict(zip(keys, values, strict=True))
        rec["sec_per_step"] = (time.perf_counter() - self.tic) / max(self.steps, 1)
        return rec


class AccelerateEngine:
    """The trainer's parallel engine for one process and DDP: accelerate's ``prepare`` and friends."""

    def __init__(self, accelerator):
        self.accelerator = accelerator

    def prepare(self, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer]):
        prepared = self.accelerator.prepare(*modules.values(), *optimizers.values())
        prepared = prepared if isinstance(prepared, tuple) else (prepared,)
        return (dict(zip(modules, prepared[:len(modules)], strict=True)),
                dict(zip(optimizers, prepared[len(modules):], strict=True)))

    def unwrap(self, module: nn.Module) -> nn.Module:
        return self.accelerator.unwrap_model(module)

    def settle(self, modules: dict[str, nn.Module]) -> None:
        """Bring the modules back to their resting state after an update's forwards (nothing to do here)."""

    def no_sync(self, module: nn.Module):
        return self.accelerator.no_sync(module)

    def backward(self, loss: Tensor) -> None:
        self.accelerator.backward(loss)

    def clip_grad_norm_(self, params: list[nn.Parameter], max_norm: float) -> Tensor:
        return self.accelerator.clip_grad_norm_(params, max_norm)

    def gather(self, modules: dict[str, nn.Module], ema: dict[str, Any]) -> tuple[dict[str, nn.Module], dict]:
        return modules, ema


def _checkpoint_hooks(accelerator) -> None:
    """accelerate would save/load the prepared models a second time: the trainer writes them by name."""

    def save_hook(models, weights, output_dir):
        weights.clear()

    def load_hook(models, input_dir):
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _resume_changes(settings: LoopConfig, out: Path, ckpt: Path | None) -> dict[str, tuple[Any, Any]]:
    """The settings a resume from ``ckpt`` changes against ``out/config.yaml`` (see :class:`LoopConfig`);
    raises unless ``settings.resume_changes``."""
    saved = out / "config.yaml"
    if ckpt is None or not saved.is_file():
        return {}
    changes = config_changes(settings, saved, ignore=settings.RESUMABLE)
    if changes and not settings.resume_changes:
        listed = "; ".join(f"{k}: {old!r} → {new!r}" for k, (old, new) in changes.items())
        raise ValueError(f"--resume {ckpt} would change the run's settings ({saved}): {listed}. Resume with the saved "
                         "settings, or add resume_changes=true to run on with the new ones (the old ones are kept "
                         "as config-<step>.yaml)")
    return changes


def train(settings: LoopConfig, build: Callable[[Any], Method], resume: str | bool | None = None,
          grad_clip: float = 0.0, desc: str = "train") -> Method:
    """Build the method with ``build(accelerator)``, train it and return it (``method.output_dir`` is
    ``settings.output_dir``).

    ``settings`` is the method's whole config (saved as ``config.yaml``); ``grad_clip`` > 0 clips
    each update's gradient norm.
    """
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    if settings.num_threads > 0:
        torch.set_num_threads(settings.num_threads)
    out = Path(settings.output_dir)
    ckpt = resolve_resume(resume, out)
    changes = _resume_changes(settings, out, ckpt)
    accelerator = make_accelerator(settings.mixed_precision, timeout_s=settings.dist_timeout_s)
    _checkpoint_hooks(accelerator)
    torch.manual_seed(settings.seed)
    method = build(accelerator)
    method.output_dir = out

    schedulers = getattr(method, "schedulers", {})
    if settings.parallel == "fsdp":
        from .fsdp import FSDPEngine

        engine = FSDPEngine(accelerator, settings.mixed_precision)
    else:
        engine = AccelerateEngine(accelerator)
    method.modules, method.optimizers = engine.prepare(method.modules, method.optimizers)
    if not isinstance(engine, AccelerateEngine):  # FSDP rebuilt the optimisers over the sharded parameters
        for name, s in schedulers.items():
            s.optimizer = method.optimizers[name]
    method.prepared()
    raw = {k: engine.unwrap(m) for k, m in method.modules.items()}
    ema = {k: EMAModel(trainable(raw[m]), decay=settings.ema_decay) for k, m in getattr(method, "ema", {}).items()}
    for e in ema.values():
        e.to(accelerator.device)
    states = {**getattr(method, "states", {}), **{f"lr_{k}": s for k, s in schedulers.items()}}
    sharded_save = sharded_load = None
    if isinstance(engine, AccelerateEngine):  # one process or DDP: every rank holds whole modules and EMA
        states = {**{k: TrainedState(m) for k, m in raw.items()}, **ema, **states}
    else:  # FSDP: each rank writes and reads its shards of them
        states = {**{f"{k}_settings": EMASettings(e) for k, e in ema.items()}, **states}

        def sharded_save(folder: Path) -> None:
            engine.save(folder, method.modules, method.optimizers, ema)

        def sharded_load(folder: Path) -> None:
            engine.load(folder, method.modules, method.optimizers, ema)
    params = {k: [p for group in o.param_groups for p in group["params"]] for k, o in method.optimizers.items()}

    metrics_path = out / "metrics.jsonl"
    start = 0
    if ckpt is not None:
        start = int(load_checkpoint(accelerator, ckpt, states, sharded_load)["step"])
        for e in ema.values():
            e.to(accelerator.device)
        if accelerator.is_main_process:
            truncate_metrics(metrics_path, start)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        kept = out / f"config-{start}.yaml"
        if changes and not kept.exists():  # the settings that made the run up to `start`
            (out / "config.yaml").replace(kept)
        save_config(settings, out / "config.yaml")
    method.start(start, out, accelerator.is_main_process)

    accum, world = settings.gradient_accumulation_steps, accelerator.num_processes
    shards, rank = accum * world, accelerator.process_index
    tensorboard = _tensorboard(out / "tensorboard") if accelerator.is_main_process else None
    total = method.total_steps
    bar = tqdm(range(start, total), initial=start, total=total, desc=desc,
               disable=not (settings.progress and accelerator.is_local_main_process))
    window = _Window()
    bad_in_a_row = 0
    for step in bar:
        for k, update in enumerate(method.updates(step)):
            opt = method.optimizers[update.optimizer]
            method.before_update(update)
            # a generator's GAN term back-propagates into the critic: every update starts clean
            for o in method.optimizers.values():
                o.zero_grad(set_to_none=True)
            for micro in range(accum):
                draw = Draw(torch.Generator().manual_seed(step_seed(settings.seed, step, k)), update.batch,
                            micro * world + rank, shards, accelerator.device)
                with contextlib.ExitStack() as stack:
                    if micro < accum - 1:
                        for m in method.modules.values():
                            stack.enter_context(engine.no_sync(m))
                    with accelerator.autocast():
                        loss, logs = update.loss(draw)
                    window.add(logs)
                    engine.backward(loss / accum)
            engine.settle(method.modules)
            norm = engine.clip_grad_norm_(params[update.optimizer], grad_clip if grad_clip > 0 else math.inf)
            if grad_clip > 0:
                window.add({f"grad_norm_{update.name}": norm})
            bad = ~(torch.isfinite(norm) & torch.isfinite(loss.detach()))
            if accelerator.reduce(bad.float().reshape(1), "max").item():  # every rank skips or none does
                bad_in_a_row += 1
                window.add({f"skipped_{update.name}": torch.ones((), device=accelerator.device)})
                if bad_in_a_row > settings.max_bad_updates:
                    raise FloatingPointError(
                        f"non-finite {update.name} loss or gradient at step {step + 1} ({bad_in_a_row} update(s) in a "
                        f"row, max_bad_updates={settings.max_bad_updates}); the update was skipped and the checkpoints "
                        f"in {out} are intact: lower the learning rates and --resume")
                continue
            bad_in_a_row = 0
            opt.step()
            if update.optimizer in schedulers:
                schedulers[update.optimizer].step()
        for name, e in ema.items():
            e.step(trainable(raw[method.ema[name]]))
        window.steps += 1
        done = step + 1
        if done % settings.log_every == 0 or done == total:
            record = {"step": done, "phase": method.phase(step), **window.record(accelerator)}
            for name, s in schedulers.items():
                record["lr" if len(schedulers) == 1 else f"lr_{name}"] = s.get_last_lr()[0]
            bar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if isinstance(v, float)
                             and k != "sec_per_step"}, refresh=False)
            window = _Window()
            method.on_log(record, ema)
            if accelerator.is_main_process:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                if tensorboard is not None:
                    for key, v in record.items():
                        if isinstance(v, float):
                            tensorboard.add_scalar(key, v, done)
        if done % settings.checkpoint_every == 0 or done == total:
            save_checkpoint(accelerator, out, done, {}, keep=settings.checkpoints_to_keep, modules=states,
                            sharded=sharded_save)
    bar.close()
    if tensorboard is not None:
        tensorboard.close()

    accelerator.wait_for_everyone()
    method.modules, ema = engine.gather(method.modules, ema)  # FSDP: full weights, gathered on every rank
    if accelerator.is_main_process:
        method.finish(out, ema)
    accelerator.wait_for_everyone()
    return method
