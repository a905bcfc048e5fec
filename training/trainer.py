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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import load_checkpoint, resolve_resume, save_checkpoint, truncate_metrics
from .config import save_config
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


class Method:
    """A training method: its modules, optimisers, updates and outputs (see the module docstring).

    Subclasses set in ``__init__``: ``modules`` (name → trained ``nn.Module``), ``optimizers``
    (name → optimiser over some of their parameters), optionally ``schedulers`` (name → LR
    scheduler, stepped after that optimiser), ``ema`` (checkpoint name → module name, averaged at
    the loop's decay) and ``states`` (extra checkpointed objects with ``state_dict``). The trainer
    replaces ``modules`` and ``optimizers`` entries by their prepared (DDP/FSDP) versions, then
    calls :meth:`prepared`; losses must use ``self.modules[...]`` from then on.
    """

    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any]
    ema: dict[str, str]
    states: dict[str, Any]
    total_steps: int

    def prepared(self) -> None:
        """Called once the modules are prepared (build what holds them here)."""

    def updates(self, step: int) -> list[Update]:
        raise NotImplementedError

    def phase(self, step: int) -> str:
        return "train"

    def start(self, step: int, output_dir: Path, is_main: bool) -> None:
        """Called before the first step (after a resume, with its step): load data, cache pairs."""

    def on_log(self, record: dict[str, Any], ema: dict[str, Any]) -> None:
        """Called with each reduced log record (every ``log_every`` steps), e.g. to evaluate."""

    def finish(self, output_dir: Path, ema: dict[str, Any]) -> None:
        """Called on the main process after the last step: export what the method produces."""


PRECISIONS = ("no", "fp16", "bf16")


@dataclass
class LoopConfig:
    """The loop's settings, shared by every method's config (which subclasses it).

    ``batch_size`` is the global batch of one update: it is split over processes and
    ``gradient_accumulation_steps`` micro-batches, so results do not depend on that split.
    """

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

    def __post_init__(self):
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision {self.mixed_precision!r} is not one of {PRECISIONS}")
        for name in ("steps", "batch_size", "gradient_accumulation_steps", "checkpoint_every", "log_every"):
            if getattr(self, name) < (0 if name == "steps" else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
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
    """Per-update logs summed on the device between two log lines; finiteness tracked the same way."""

    def __init__(self):
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self.first_bad: dict[str, Tensor] = {}
        self.steps, self.tic = 0, time.perf_counter()

    def add(self, logs: Logs) -> None:
        for k, v in logs.items():
            v = v.detach().float().mean()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
            self.counts[k] = self.counts.get(k, 0) + 1

    def watch(self, name: str, loss: Tensor, step: int) -> None:
        bad = ~torch.isfinite(loss.detach())
        prev = self.first_bad.get(name, torch.full((), -1, device=loss.device))
        self.first_bad[name] = torch.where(bad & (prev < 0), torch.full_like(prev, step), prev)

    def check(self, accelerator, out: Path) -> None:
        """Raise FloatingPointError naming the first non-finite update (one host sync)."""
        if not self.first_bad:
            return
        names = list(self.first_bad)
        bad = accelerator.reduce(torch.stack(list(self.first_bad.values())).float(), "max").tolist()
        for name, step in zip(names, bad, strict=True):
            if step >= 0:
                raise FloatingPointError(f"non-finite {name} loss at step {int(step)}; the checkpoints in {out} "
                                         "are intact: lower the learning rates and --resume")

    def record(self, accelerator) -> dict[str, float]:
        keys = sorted(self.sums)
        values = torch.stack([self.sums[k] / self.counts[k] for k in keys]) if keys else torch.zeros(0)
        values = accelerator.reduce(values.to(accelerator.device), "mean").tolist() if keys else []
        rec = dict(zip(keys, values, strict=True))
        rec["sec_per_step"] = (time.perf_counter() - self.tic) / max(self.steps, 1)
        return rec


def _checkpoint_hooks(accelerator) -> None:
    """accelerate would save/load the prepared models a second time: the trainer writes them by name."""

    def save_hook(models, weights, output_dir):
        weights.clear()

    def load_hook(models, input_dir):
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def train(settings: LoopConfig, build: Callable[[Any], Method], resume: str | bool | None = None,
          grad_clip: float = 0.0, desc: str = "train") -> Path:
    """Build the method with ``build(accelerator)``, train it, return ``settings.output_dir``.

    ``settings`` is the method's whole config (saved as ``config.yaml``); ``grad_clip`` > 0 clips
    each update's gradient norm.
    """
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    if settings.num_threads > 0:
        torch.set_num_threads(settings.num_threads)
    out = Path(settings.output_dir)
    accelerator = make_accelerator(settings.mixed_precision)
    _checkpoint_hooks(accelerator)
    torch.manual_seed(settings.seed)
    method = build(accelerator)

    names, opt_names = list(method.modules), list(method.optimizers)
    prepared = accelerator.prepare(*method.modules.values(), *method.optimizers.values())
    prepared = prepared if isinstance(prepared, tuple) else (prepared,)
    method.modules = dict(zip(names, prepared[:len(names)], strict=True))
    method.optimizers = dict(zip(opt_names, prepared[len(names):], strict=True))
    schedulers = getattr(method, "schedulers", {})
    method.prepared()
    raw = {k: accelerator.unwrap_model(m) for k, m in method.modules.items()}
    ema = {k: EMAModel(raw[m].parameters(), decay=settings.ema_decay) for k, m in getattr(method, "ema", {}).items()}
    for e in ema.values():
        e.to(accelerator.device)
    states = {**raw, **ema, **getattr(method, "states", {}), **{f"lr_{k}": s for k, s in schedulers.items()}}
    params = {k: [p for group in o.param_groups for p in group["params"]] for k, o in method.optimizers.items()}

    metrics_path = out / "metrics.jsonl"
    start = 0
    ckpt = resolve_resume(resume, out)
    if ckpt is not None:
        start = int(load_checkpoint(accelerator, ckpt, states)["step"])
        for e in ema.values():
            e.to(accelerator.device)
        if accelerator.is_main_process:
            truncate_metrics(metrics_path, start)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(settings, out / "config.yaml")
    method.start(start, out, accelerator.is_main_process)

    accum, world = settings.gradient_accumulation_steps, accelerator.num_processes
    shards, rank = accum * world, accelerator.process_index
    tensorboard = _tensorboard(out / "tensorboard") if accelerator.is_main_process else None
    total = method.total_steps
    bar = tqdm(range(start, total), initial=start, total=total, desc=desc,
               disable=not (settings.progress and accelerator.is_local_main_process))
    window = _Window()
    for step in bar:
        for k, update in enumerate(method.updates(step)):
            opt = method.optimizers[update.optimizer]
            # a generator's GAN term back-propagates into the critic: every update starts clean
            for o in method.optimizers.values():
                o.zero_grad(set_to_none=True)
            for micro in range(accum):
                draw = Draw(torch.Generator().manual_seed(step_seed(settings.seed, step, k)), update.batch,
                            micro * world + rank, shards, accelerator.device)
                with contextlib.ExitStack() as stack:
                    if micro < accum - 1:
                        for m in method.modules.values():
                            stack.enter_context(accelerator.no_sync(m))
                    with accelerator.autocast():
                        loss, logs = update.loss(draw)
                    window.watch(update.name, loss, step)
                    window.add(logs)
                    accelerator.backward(loss / accum)
            if grad_clip > 0:
                norm = accelerator.clip_grad_norm_(params[update.optimizer], grad_clip)
                window.add({f"grad_norm_{update.name}": norm})
            opt.step()
            if update.optimizer in schedulers:
                schedulers[update.optimizer].step()
        for name, e in ema.items():
            e.step(raw[method.ema[name]].parameters())
        window.steps += 1
        done = step + 1
        if done % settings.log_every == 0 or done == total:
            window.check(accelerator, out)
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
            window.check(accelerator, out)
            save_checkpoint(accelerator, out, done, {}, keep=settings.checkpoints_to_keep, modules=states)
    bar.close()
    if tensorboard is not None:
        tensorboard.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        method.finish(out, ema)
    accelerator.wait_for_everyone()
    return out
