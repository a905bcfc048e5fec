"""``fdistill distill-video``: a few-step causal HiAR video student by self-rollout distribution matching.

Stages, one global step counter (``HIAR_TRAINING.md`` has the reference code's details):

1. Teacher trajectories (before the first step, cached on disk by their settings): probability-flow
   ODE (Euler) trajectories of the bidirectional teacher with guidance, kept at the student's times
   t_0 > … > t_{K−1}, at the clean end, and at the teacher's first step t_1' (for the regulariser).
2. ``warmup.steps`` steps of ODE regression: each block of a trajectory gets a random step index k, one
   block-causal forward over the whole clip (no KV cache) predicts x̂0, MSE against the clean end;
   then ``critic_warmup_steps`` critic-only steps.
3. ``steps`` self-rollout iterations: ``critic_steps`` critic updates (fake score, and the
   discriminator head when the divergence needs r, on sg(student rollouts)), then one generator update.
   The generator unrolls the student over the clip in ``order`` (hierarchical: step-first, HiAR;
   sequential: block-first, Self-Forcing) up to one random exit step e shared by every block;
   everything before e runs without gradient, the exit forwards with it, and cache writes are detached.
   Its loss is :class:`~fdistill.objective.FDistillObjective`'s (the same objective as the image
   students: reverse-KL is HiAR's DMD). With the forward-KL regulariser (weight > 0), e = 0 trains the
   regulariser instead: the student's x̂0 from pure noise, all frames in one forward, regressed onto
   the x0 implied by the teacher's first ODE step (:func:`regulariser_target`).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from fdistill.denoisers import Denoiser
from fdistill.models.causal_wan import CausalWanTransformer3DModel
from fdistill.models.discriminator import FeatureDiscriminator
from fdistill.models.hiar_cell import HiARCells, HiARPlan, cell_waves, denoising_times
from fdistill.schedules import FlowMatchingSchedule, NoiseSchedule, schedule_from_scheduler
from fdistill.teachers import MOVING_DIGITS_TEACHER, load_moving_digits_teacher

from .cache import cached_tensors
from .config import load_config
from .hiar_config import HiARConfig
from .matching import DistributionMatching
from .trainer import Draw, train, trainable

__all__ = ["HiARConfig", "HiARStudent", "distill_video", "distill_video_from_cli", "regulariser_target",
           "self_rollout", "teacher_grid", "teacher_trajectories"]


def teacher_grid(schedule: FlowMatchingSchedule, steps: list[int], per_interval: int) -> tuple[Tensor, list[int]]:
    """The teacher's Euler grid (times (M+1,) from 1 to 0) and the grid index of each student time t_k.

    Each student interval [u_k, u_{k+1}] of raw times u = step/1000 (u_K = 0) is cut into
    ``per_interval`` equal pieces and warped by the shift, so t_k = shift(u_k) lies on the grid
    (for [1000, 750, 500, 250] and 6 per interval this is the teacher's own 24-step grid).
    """
    u = torch.tensor([*steps, 0], dtype=torch.float64) / 1000
    pieces = [torch.linspace(float(a), float(b), per_interval + 1)[:-1] for a, b in zip(u[:-1], u[1:], strict=True)]
    raw = torch.cat([*pieces, torch.zeros(1, dtype=torch.float64)])
    return schedule.shift_t(raw).float(), [k * per_interval for k in range(len(steps))]


@torch.no_grad()
def teacher_trajectories(teacher: Denoiser, labels: Tensor, z: Tensor, grid: Tensor, keep: list[int],
                         guidance_scale: float) -> tuple[Tensor, Tensor]:
    """Euler ODE of the guided teacher from noise z (B, C, T, H, W) at grid[0] = 1 down to 0.

    Returns (states (B, K+1, C, T, H, W): x at grid[keep[k]] for each student time, then the clean
    end; first (B, C, T, H, W): x at grid[1], the teacher's first step).
    """
    schedule, cond = teacher.schedule, teacher.label_embedding(labels)
    x, kept, first = z, {}, None
    for i in range(len(grid) - 1):
        if i in keep:
            kept[i] = x
        t, t_next = grid[i].expand(z.shape[0]), grid[i + 1].expand(z.shape[0])
        x0 = teacher(x, t, cond, guidance_scale=guidance_scale)
        x = schedule.ddim_step(x, x0, t, t_next)  # the flow's Euler step: x + (t_next − t)·v, v = (x − x̂0)/t
        if i == 0:
            first = x
    return torch.stack([*(kept[i] for i in keep), x], dim=1), first


def regulariser_target(x_in: Tensor, x_first: Tensor, t_in: float, t_first: float) -> Tensor:
    """The x0 implied by the teacher's first ODE step from x_in at t_in to x_first at t_first.

    An Euler step of the flow x_t = (1 − t) x0 + t ε moves along v = (x_first − x_in)/(t_first − t_in),
    and the same velocity gives x̂0 = x_in − t_in·v (HiAR's released code; at t_in = 1 this is the
    teacher's guided x̂0 at pure noise).
    """
    return x_in - t_in * (x_first - x_in) / (t_first - t_in)


class _TensorNoise:
    """The noise of one rollout, drawn by the caller: (B, K+1, C, T, H, W); slot 0 is the initial noise,
    slot k + 1 re-noises step k (the :class:`~fdistill.models.hiar_cell.NoiseBank` interface)."""

    def __init__(self, eps: Tensor, frames_per_block: int):
        self.eps, self.f = eps, frames_per_block

    def initial(self, b: int) -> Tensor:
        return self.eps[:, 0, :, b * self.f:(b + 1) * self.f]

    def renoise(self, k: int, b: int) -> Tensor:
        return self.eps[:, k + 1, :, b * self.f:(b + 1) * self.f]


def _detach_cache(cache) -> None:
    cache.keys = [k if k is None else k.detach() for k in cache.keys]
    cache.values = [v if v is None else v.detach() for v in cache.values]


def self_rollout(model: CausalWanTransformer3DModel, schedule: NoiseSchedule, plan: HiARPlan, condition: Tensor,
                 eps: Tensor, order: str, exit_step: int) -> Tensor:
    """The student's own video, exiting at step ``exit_step`` of every block: x̂0 (B, C, N·F, H, W).

    The cells run in ``order`` over the cell grid; cells before the exit step and every cache write run
    without gradient, so (under grad mode) gradients reach the parameters only through the N exit
    forwards. ``sequential`` (Self-Forcing) treats the exit step as the last: each block's x̂0 is
    written once, clean, into the one context cache. ``eps``: :class:`_TensorNoise` layout.
    """
    if order == "sequential":
        plan = replace(plan, times=(*plan.times[:exit_step + 1], 0.0))
    plan = replace(plan, fused=False)  # a write must never share a forward with a graph
    cells = HiARCells(model, schedule, plan, condition, _TensorNoise(eps, plan.frames_per_block),
                      clean_context=order == "sequential")
    grad = torch.is_grad_enabled()
    outputs: dict[int, Tensor] = {}
    for wave in cell_waves(order, plan.num_blocks, plan.num_steps):
        ((k, b),) = wave
        if k > exit_step:
            continue
        forward = cells.request(k, b)
        with torch.set_grad_enabled(grad and k == exit_step):
            out = cells.forward([forward])[0]
            if k == exit_step:
                t = torch.full((out.shape[0],), plan.times[k], device=out.device)
                outputs[b] = schedule.to_x0(out.float(), forward.x.float(), t)
                _detach_cache(forward.cache)  # context "same": the exit forward wrote its own input
        with torch.no_grad():
            cells.forward(cells.finish(k, b, out.detach()))
    return torch.cat([outputs[b] for b in range(plan.num_blocks)], dim=2)


def _file_digest(path: Path) -> str:
    if path.is_dir():
        path = path / "model" / "diffusion_pytorch_model.safetensors"
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _folder_identity(folder: Path) -> list[list]:
    """(name, size) of the weight files of a model folder: its identity without reading gigabytes."""
    return sorted([p.name, p.stat().st_size] for p in folder.iterdir() if p.is_file())


class PromptTable(nn.Module):
    """Prompt index → the teacher's text-encoder embeddings (a Wan teacher's "labels"): rows (P, L, D) of the
    prompts, then the unconditional row (the empty prompt's) at ``null_label`` = P."""

    def __init__(self, rows: Tensor, null: Tensor):
        super().__init__()
        self.register_buffer("table", torch.cat([rows, null]).float())

    @property
    def num_classes(self) -> int:
        return self.table.shape[0] - 1

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, labels: Tensor) -> Tensor:
        return self.table[labels]

    def null(self) -> Tensor:
        return self.table[-1:]


class HiARStudent(DistributionMatching):
    """The HiAR student on the shared loop (see the module docstring): of the label-conditioned moving-digits
    teacher, or of a stock Wan2.1 text-to-video folder and a list of prompts."""

    def __init__(self, config: HiARConfig, device: torch.device):
        self.config = c = config
        self.device = device
        self.feature_modules = c.discriminator.feature_modules if c.objective.needs_discriminator else []
        self.pipe = None
        clip = c.clip
        if c.teacher.is_wan_folder:
            self.teacher_path = Path(c.teacher.path)
            self.teacher, self.embedding = self._wan_teacher(c, device)
            h, w = clip.height // self.pipe.vae_scale_factor_spatial, clip.width // self.pipe.vae_scale_factor_spatial
        else:
            self.teacher_path = Path(c.teacher.path) if c.teacher.path else MOVING_DIGITS_TEACHER
            self.teacher = load_moving_digits_teacher(self.teacher_path, feature_modules=self.feature_modules,
                                                      device=device)
            self.embedding = self.teacher.label_embedding.to(device).requires_grad_(False)
            h = w = int(self.teacher.metadata["data"]["kwargs"]["size"])
        schedule = self.schedule = self.teacher.schedule
        if not isinstance(schedule, FlowMatchingSchedule):
            raise ValueError(f"a HiAR student is a flow-matching model; this teacher uses {type(schedule).__name__}")
        self.height, self.width = h, w
        self.channels = int(self.teacher.model.config.in_channels)
        self.shape = (self.channels, clip.num_frames, h, w)
        self.plan = HiARPlan(denoising_times(schedule, clip.denoising_steps), clip.num_frames // clip.frames_per_block,
                             clip.frames_per_block, window=clip.window, sink_frames=clip.sink_frames,
                             context=clip.context, fused=not clip.sink_frames)
        self.K = self.plan.num_steps

        student = CausalWanTransformer3DModel.from_config(self.teacher.model.config)
        student.load_state_dict(self.teacher.model.state_dict())
        student.to(device).train()
        fake = Denoiser(copy.deepcopy(self.teacher.model).requires_grad_(True).train(), schedule,
                        "encoder_hidden_states").to(device)
        disc = None
        if c.objective.needs_discriminator:
            g = torch.Generator().manual_seed(c.seed)
            probe = torch.randn(2, *self.shape, generator=g).to(device)
            disc = FeatureDiscriminator.build(self.teacher, probe, torch.ones(2, device=device),
                                              self.embedding(torch.arange(2, device=device)),
                                              hidden=c.discriminator.hidden, kind=c.discriminator.head).to(device)
        self.optimizers = {"warmup": torch.optim.Adam(student.parameters(), lr=c.warmup.lr),
                           **self.build_critic(student, fake, disc, c.optim)}
        self.score_teacher = self.teacher
        self.ema = {"ema": "student"}
        self.data: dict[str, Tensor] = {}
        self.phases = self.matching_phases(c.warmup.steps, c.warmup.batch_size, c.critic_warmup_steps, c.steps,
                                           c.critic_steps, c.batch_size)

    def _wan_teacher(self, c: HiARConfig, device: torch.device) -> tuple[Denoiser, PromptTable]:
        """The Wan folder's transformer (causal, frozen) as the teacher, and the prompts' embeddings."""
        from fdistill.pipelines import HiARPipeline

        pipe = self.pipe = HiARPipeline.from_pretrained(c.teacher.path)
        pipe.to(device)
        for module in pipe.components.values():
            if isinstance(module, nn.Module):
                module.eval().requires_grad_(False)
        with torch.no_grad():
            rows, null = pipe.encode_prompt(c.data.all_prompts(), do_classifier_free_guidance=True,
                                            max_sequence_length=c.data.max_sequence_length, device=device)
        table = PromptTable(rows, null[:1]).to(device)
        teacher = Denoiser(pipe.transformer, schedule_from_scheduler(pipe.scheduler), "encoder_hidden_states",
                           null_condition=table.null(), feature_modules=self.feature_modules).eval()
        teacher.label_embedding, teacher.num_classes = table, table.num_classes
        return teacher, table

    # -- stage 1 ---------------------------------------------------------------------------
    def trajectory_settings(self) -> dict[str, Any]:
        """Everything that fixes the cached trajectories (their cache key)."""
        c, t = self.config, self.config.trajectories
        teacher = ({"teacher_files": _folder_identity(self.teacher_path / "transformer"),
                    "prompts": c.data.all_prompts(), "max_sequence_length": c.data.max_sequence_length,
                    "size": [self.height, self.width]} if self.pipe is not None
                   else {"teacher_sha256": _file_digest(self.teacher_path)})
        return {**teacher, "guidance_scale": t.guidance_scale,
                "steps_per_interval": t.steps_per_interval, "denoising_steps": list(c.clip.denoising_steps),
                "shift": self.schedule.shift, "count": t.count, "seed": c.seed, "num_frames": c.clip.num_frames}

    def load_trajectories(self, write: bool) -> dict[str, Tensor]:
        """Stage 1: the trajectories for these settings, from the cache (:mod:`~fdistill.training.cache`) or
        made (and written there when ``write``).

        Keys: ``states`` (n, K+1, C, T, H, W), ``first`` (n, C, T, H, W), ``labels`` (n,),
        ``times`` (K+1,) (t_0 … t_{K−1}, 0), ``first_t`` (1,).
        """
        return cached_tensors(self.config.trajectories.cache_dir, "trajectories", self.trajectory_settings(),
                              lambda: self._make_trajectories(write), write)

    def _make_trajectories(self, show: bool) -> dict[str, Tensor]:
        t = self.config.trajectories
        grid, keep = teacher_grid(self.schedule, self.config.clip.denoising_steps, t.steps_per_interval)
        g = torch.Generator().manual_seed(self.config.seed + 7919)
        labels = torch.arange(t.count) % self.teacher.num_classes
        z = torch.randn(t.count, *self.shape, generator=g)
        starts = tqdm(range(0, t.count, t.batch_size), desc="teacher trajectories", unit="batch",
                      disable=not show)  # the stage takes minutes on a CPU: show it
        parts = [teacher_trajectories(self.teacher, labels[i:i + t.batch_size].to(self.device),
                                      z[i:i + t.batch_size].to(self.device), grid.to(self.device), keep,
                                      t.guidance_scale) for i in starts]
        return {"states": torch.cat([s for s, _ in parts]).cpu(), "first": torch.cat([f for _, f in parts]).cpu(),
                "labels": labels, "times": torch.tensor([float(grid[i]) for i in keep] + [0.0]),
                "first_t": grid[1:2].clone()}

    def start(self, step: int, output_dir: Path, is_main: bool) -> None:
        d = self.load_trajectories(is_main)
        d["target"] = regulariser_target(d["states"][:, 0], d["first"], float(d["times"][0]), float(d["first_t"][0]))
        self.data = {k: v.to(self.device) for k, v in d.items()}

    # -- losses ----------------------------------------------------------------------------
    def _index(self, draw: Draw, n: int | None = None) -> Tensor:
        count = self.data["labels"].shape[0]
        return draw(lambda m, g: torch.randint(count, (m,), generator=g), n)

    def regression_loss(self, draw: Draw) -> tuple[Tensor, dict[str, Tensor]]:
        """Stage 2: block-causal ODE regression, a random trajectory step per block, MSE where t ≠ 0."""
        d = self.data
        i = self._index(draw)
        k = draw(lambda m, g: torch.randint(self.K, (m, self.plan.num_blocks), generator=g))
        k = k.repeat_interleave(self.plan.frames_per_block, dim=1)  # (b, T): the step of each frame
        states = d["states"][i]
        x = torch.take_along_dim(states, k.view(k.shape[0], 1, 1, -1, 1, 1), dim=1).squeeze(1)
        t = d["times"][k]
        out = self.modules["student"](x, self.schedule.model_time(t), self.embedding(d["labels"][i]),
                                      attention="block_causal", frames_per_block=self.plan.frames_per_block).sample
        x0 = self.schedule.to_x0(out.float(), x, t)
        mask = (t > 0).float()[:, None, :, None, None].expand_as(x0)
        loss = ((x0 - states[:, self.K]).pow(2) * mask).sum() / mask.sum().clamp_min(1)
        return loss, {"ode_mse": loss.detach()}

    def _noise(self, draw: Draw) -> tuple[Tensor, Tensor]:
        """(t (B,), ε (B, C, T, H, W)) of the DM loss / critic (``dm_time``)."""
        spec = self.config.dm_time
        if spec.kind == "schedule":
            return draw(lambda m, g: self.objective.noise(m, self.shape, g))

        def uniform(m: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
            u = torch.rand(m, generator=g)
            t = (spec.shift * u / (1 + (spec.shift - 1) * u)).clamp(spec.t_min, spec.t_max)
            return t, torch.randn(m, *self.shape, generator=g)

        return draw(uniform)

    def _rollout(self, draw: Draw, exit_step: int) -> tuple[Tensor, Tensor]:
        labels = draw(lambda m, g: torch.randint(self.teacher.num_classes, (m,), generator=g))
        eps = draw.randn(self.K + 1, *self.shape)
        cond = self.embedding(labels)
        return self_rollout(self.modules["student"], self.schedule, self.plan, cond, eps, self.config.order,
                            exit_step), cond

    def critic_loss(self, draw: Draw) -> tuple[Tensor, dict[str, Tensor]]:
        exit_step = int(torch.randint(self.K, (1,), generator=draw.generator))  # same on every shard
        with torch.no_grad():
            x0, cond = self._rollout(draw, exit_step)
        t, eps = self._noise(draw)
        if self.disc is None:
            return self.objective.critic_loss(x0, cond, t, eps)
        i = self._index(draw)
        t_real, eps_real = self._noise(draw)
        return self.objective.critic_loss(x0, cond, t, eps, self.data["states"][i, self.K],
                                          self.embedding(self.data["labels"][i]), t_real, eps_real)

    def regulariser_loss(self, draw: Draw) -> tuple[Tensor, dict[str, Tensor]]:
        """Forward-KL regulariser: x̂0 of all frames from the trajectory's noise at t_0, one forward."""
        c, d = self.config, self.data
        i = self._index(draw)
        z = d["states"][i, 0]
        t = torch.full((z.shape[0],), float(d["times"][0]), device=z.device)
        causal = c.regulariser.attention == "block_causal"
        out = self.modules["student"](z, self.schedule.model_time(t), self.embedding(d["labels"][i]),
                                      attention=c.regulariser.attention,
                                      frames_per_block=self.plan.frames_per_block if causal else None).sample
        mse = (self.schedule.to_x0(out.float(), z, t) - d["target"][i]).pow(2).mean()
        return c.regulariser.weight * mse, {"reg_mse": mse.detach()}

    def generator_loss(self, draw: Draw) -> tuple[Tensor, dict[str, Tensor]]:
        exit_step = int(torch.randint(self.K, (1,), generator=draw.generator))  # same on every shard and block
        if exit_step == 0 and self.config.regulariser.weight > 0:
            return self.regulariser_loss(draw)
        x0, cond = self._rollout(draw, exit_step)
        t, eps = self._noise(draw)
        return self.objective.generator_loss(x0, cond, t, eps)

    # -- ship ------------------------------------------------------------------------------
    def student_metadata(self) -> dict[str, Any]:
        c = self.config
        return {"denoising_steps": list(c.clip.denoising_steps), "frames_per_block": c.clip.frames_per_block,
                "window": c.clip.window, "sink_frames": c.clip.sink_frames, "order": c.order,
                "context": c.clip.context, "num_frames": c.clip.num_frames,
                "height": self.height, "width": self.width, "shift": self.schedule.shift,
                "guidance_scale": 1.0, "teacher_guidance_scale": c.objective.guidance_scale,
                "command": f"fdistill distill-video --config {Path(c.output_dir) / 'config.yaml'}",
                "config": asdict(c)}

    def finish(self, output_dir: Path, ema: dict[str, Any]) -> None:
        if not self.config.export:
            return
        from accelerate.utils import extract_model_from_parallel

        from fdistill.pipelines.hiar_student import export_hiar_student

        student = copy.deepcopy(extract_model_from_parallel(self.modules["student"])).cpu()
        ema["ema"].copy_to(trainable(student))
        if self.pipe is None:
            export_hiar_student(student, self.embedding, self.student_metadata(),
                                output_dir / "hiar_student.safetensors")
            return
        self.export_wan_pipeline(student.eval(), output_dir / "pipeline")

    def export_wan_pipeline(self, student: nn.Module, path: Path) -> None:
        """The student as a :class:`HiARPipeline` folder with the Wan folder's VAE, text encoder and tokenizer and
        the settings it was trained for as its defaults: ``pipe(prompt)`` draws its video."""
        from fdistill.io import atomic_folder
        from fdistill.pipelines import HiARPipeline

        c, pipe = self.config, self.pipe
        frames = (c.clip.num_frames - 1) * pipe.vae_scale_factor_temporal + 1  # pixel frames of the training clip
        student_pipe = HiARPipeline(
            transformer=student, scheduler=pipe.scheduler, vae=pipe.vae.cpu(), text_encoder=pipe.text_encoder.cpu(),
            tokenizer=pipe.tokenizer, frames_per_block=c.clip.frames_per_block,
            denoising_steps=list(c.clip.denoising_steps), context=c.clip.context, num_frames=frames,
            height=c.clip.height, width=c.clip.width, window=c.clip.window, sink_frames=c.clip.sink_frames,
            order=c.order, guidance_scale=1.0)
        with atomic_folder(path) as tmp:
            student_pipe.save_pretrained(tmp)


def distill_video(config: HiARConfig, resume: str | bool | None = None) -> Path:
    """Train the HiAR student; returns ``output_dir``, with, when ``export``, ``hiar_student.safetensors`` (a
    label-conditioned teacher's student) or ``pipeline/`` (a Wan folder's student: a HiARPipeline folder)."""
    return train(config, lambda accelerator: HiARStudent(config, accelerator.device), resume, config.optim.grad_clip,
                 "hiar").output_dir


def distill_video_from_cli(config_path: str | None, overrides: list[str], resume: str | None = None) -> Path:
    """Entry point of ``fdistill distill-video``."""
    return distill_video(load_config(HiARConfig, config_path, overrides), resume=resume)

