"""Where the f-distill trainer's inputs come from: the teacher, real samples and ODE pairs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fdistill.denoisers import Denoiser
from fdistill.io import atomic_save_file

from .distill_config import DataSpec, TeacherSpec, WarmupSpec


@dataclass
class Teacher:
    """Everything the trainer needs from a teacher.

    ``student_t`` / ``student_scale``: the one-step student maps ε to x̂0(student_scale·ε, student_t), the
    input its stock pipeline feeds it (None: the schedule's prior at t_max). ``identity`` names the
    teacher and its conditions for caches.
    """

    denoiser: Denoiser
    sample_shape: tuple[int, ...]
    conditions: Any  # draw(batch, generator) -> condition tensor (labels or packed prompt conditions)
    components: dict[str, Any] = field(default_factory=dict)  # "family": the adapter that exports the student
    student_t: float | None = None
    student_scale: float | None = None
    identity: dict[str, Any] = field(default_factory=dict)


def load_teacher_for(spec: TeacherSpec, guidance_scale: float, device: torch.device,
                     data: DataSpec | None = None, feature_modules: list[str] | None = None) -> Teacher:
    """Build the frozen teacher Denoiser and the condition sampler for ``spec`` (and, for a pipeline teacher,
    the prompts, resolution and dataset of ``data``); the Denoiser taps ``feature_modules`` for the
    discriminator (None: ``mid_block`` for the asset UNets, the family's default for pipelines)."""
    data = data or DataSpec()
    identity = {"kind": spec.kind, "path": spec.path, "guidance_scale": guidance_scale}
    if spec.kind == "asset":
        from fdistill.teachers import load_digits_teacher

        den = load_digits_teacher(spec.path, guidance_scale=guidance_scale,
                                  feature_modules=feature_modules or ["mid_block"], device=device)
        cfg = den.model.config
        num_classes = den.num_classes

        def draw(batch: int, g: torch.Generator) -> Tensor:
            return torch.randint(num_classes, (batch,), generator=g).to(device)

        size = cfg.sample_size if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)[0]
        return Teacher(den, (cfg.in_channels, size, size), draw, identity=identity)
    return _load_pipeline_teacher(spec, guidance_scale, device, data, identity, feature_modules)


def _load_pipeline_teacher(spec: TeacherSpec, guidance_scale: float, device: torch.device, data: DataSpec,
                           identity: dict[str, Any], feature_modules: list[str] | None) -> Teacher:
    """A diffusers pipeline folder through its family's adapter (:mod:`fdistill.families`).

    The student's conditions are the prompts (``data.prompts``, ``data.prompts_file``), else the captions of
    the dataset (image folder or latent cache); class-conditional teachers draw every class.
    """
    from fdistill.families import FamilyNet, load_family

    resolution = None if data.resolution is None else (data.resolution, data.resolution)
    cache = None
    if data.name == "cache":  # no VAE, no text encoder: latents and conditions come encoded
        from fdistill.data.latent_cache import read_latent_cache

        cache = read_latent_cache(data.path)
        resolution = tuple(cache.meta["resolution"])
        family = load_family(spec.path, device, resolution, guidance_scale, encoders=False,
                             vae_factor=cache.meta["vae_scale_factor"])
        if cache.meta["family"] != family.name:
            raise ValueError(f"data.path {data.path!r} was encoded for a {cache.meta['family']} teacher, not "
                             f"{family.label}: make the cache with this teacher")
        family.set_layout(cache.meta["layout"])
    else:
        family = load_family(spec.path, device, resolution, guidance_scale)
    prompts = data.all_prompts()
    if family.conditioning != "text":
        items: list = list(range(family.num_classes))
        table = family.conditions(items)
    elif cache is not None:
        items, table = cache.captions, cache.conditions
    else:
        items = prompts or [caption for _, caption in _captioned_images(data)]
        table = family.conditions(list(dict.fromkeys(items)))
    table = table.to(device)
    null = (cache.null if cache is not None else family.null_condition()).to(device)
    cfg = guidance_scale if family.guidance == "cfg" else 1.0  # embedded guidance goes into the network
    features = feature_modules if feature_modules is not None else family.feature_modules()
    den = Denoiser(FamilyNet(family.model, family), family.schedule, "condition", cfg, null, features).eval()

    def draw(batch: int, g: torch.Generator) -> Tensor:
        return table[torch.randint(len(table), (batch,), generator=g).to(device)]

    one = family.one_step()
    identity.update(family=family.name, conditions=items, resolution=[family.height, family.width])
    return Teacher(den, family.sample_shape, draw, {"family": family, "cache": cache}, one.t, one.scale, identity)


def _captioned_images(data: DataSpec) -> list[tuple[Path, str]]:
    if data.name != "imagefolder":
        raise ValueError(f"a text-conditioned teacher with data.name={data.name!r} needs data.prompts or "
                         "data.prompts_file (the captions of an image folder or a latent cache serve otherwise)")
    from fdistill.data.captions import read_image_folder

    return read_image_folder(data.path, data.caption_column)


def unconditional(teacher: Teacher, device: torch.device) -> Teacher:
    """The same teacher whose condition sampler always gives its null condition (its CFG input)."""
    null = teacher.denoiser.null_condition
    if null is None:
        raise ValueError("data.unconditional needs a teacher with a null condition (classifier-free guidance)")

    def draw(batch: int, g: torch.Generator) -> Tensor:
        if isinstance(null, int):
            return torch.full((batch,), null, dtype=torch.long, device=device)
        return null.expand(batch, *null.shape[1:])

    return replace(teacher, conditions=draw, identity={**teacher.identity, "unconditional": True})


@torch.no_grad()
def teacher_samples(teacher: Teacher, n: int, steps: int, batch_size: int, g: torch.Generator,
                    device: torch.device, desc: str = "teacher samples") -> tuple[Tensor, Tensor, Tensor]:
    """(z, condition, x0) for ``n`` samples of the teacher's reference sampler, drawn batch by batch (a progress
    bar when there is more than one batch)."""
    from tqdm.auto import tqdm

    den, zs, cs, xs = teacher.denoiser, [], [], []
    for i in tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=n <= batch_size, leave=False):
        b = min(batch_size, n - i)
        c = teacher.conditions(b, g)
        z = torch.randn(b, *teacher.sample_shape, generator=g).to(device)
        xs.append(den.sample(z, steps, c))
        zs.append(z)
        cs.append(c)
    return torch.cat(zs), torch.cat(cs), torch.cat(xs)


class RealData:
    """Real samples x0 and their conditions for the discriminator, drawn by index (a global batch every rank
    draws alike): the digits, the teacher's own samples, an image folder encoded by the teacher's VAE and
    text encoders at the start, or a latent cache."""

    def __init__(self, data: DataSpec, seed: int, batch_size: int, teacher: Teacher, device: torch.device):
        self.device = device
        family = teacher.components.get("family")
        if data.name == "digits":
            from fdistill.data.digits import load_digits_tensors

            x, y = load_digits_tensors("train")
            if tuple(x.shape[1:]) != teacher.sample_shape:
                raise ValueError(f"digits are {tuple(x.shape[1:])} but the teacher samples {teacher.sample_shape}: "
                                 "data.name=digits needs a teacher of 16×16 digits; set data.name=teacher_samples "
                                 "to draw the real samples from the teacher")
            self.x, self.c = x.to(device), y.to(device)
            if data.unconditional:
                self.c = teacher.conditions(len(y), torch.Generator())
        elif data.name == "cache":
            cache = teacher.components["cache"]
            self.x, self.c = cache.latents.to(device), cache.conditions.to(device)
        elif data.name == "imagefolder":
            from fdistill.data.captions import image_tensor

            pairs = _captioned_images(data)
            channels = family.pipe.vae.config.in_channels
            images = torch.stack([image_tensor(_open(path), family.height, channels) for path, _ in pairs])
            self.x = family.latents_from_images(images).to(device)
            self.c = family.conditions([caption for _, caption in pairs]).to(device)
        else:
            g = torch.Generator().manual_seed(seed + 12345)
            _, self.c, self.x = teacher_samples(teacher, data.num_samples, data.sample_steps, batch_size, g, device)

    def __call__(self, batch: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        i = torch.randint(self.x.shape[0], (batch,), generator=g).to(self.device)
        return self.x[i], self.c[i]

    def sample(self, draw) -> tuple[Tensor, Tensor]:
        """This shard's rows of the update's real batch."""
        return draw(self)


def _open(path: Path):
    from PIL import Image

    with Image.open(path) as image:
        return image.copy()


class RealStream:
    """Real samples streamed from webdataset shards: each rank reads its own shards in a fixed order and encodes
    its local rows with the teacher's VAE and text encoders. ``state_dict`` holds how many samples this rank
    has read (checkpointed: a resumed run reads on from there)."""

    def __init__(self, data: DataSpec, teacher: Teacher, device: torch.device, rank: int, world: int):
        self.data, self.family, self.device, self.rank, self.world = data, teacher.components["family"], device, \
            rank, world
        self.consumed = 0
        self._stream = None

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consumed, self._stream = int(state["consumed"]), None

    def sample(self, draw) -> tuple[Tensor, Tensor]:
        """This rank's rows of the update's real batch, read from its own shards."""
        return draw.stream(self.local)

    def local(self, n: int) -> tuple[Tensor, Tensor]:
        """The next ``n`` samples of this rank: (latents, packed conditions)."""
        from fdistill.data.captions import webdataset_samples

        if self._stream is None:
            channels = self.family.pipe.vae.config.in_channels
            self._stream = webdataset_samples(self.data.path, self.family.height, channels, self.consumed,
                                              self.rank, self.world)
        items = [next(self._stream) for _ in range(n)]
        self.consumed += n
        images = torch.stack([x for x, _ in items])
        return (self.family.latents_from_images(images).to(self.device),
                self.family.conditions([c for _, c in items]).to(self.device))


def ode_pairs(teacher: Teacher, spec: WarmupSpec, seed: int, device: torch.device, cache: Path | None,
              batch_size: int = 256) -> tuple[Tensor, Tensor, Tensor]:
    """(z, condition, teacher sample) triples from the teacher's reference sampler; cached on disk.

    The cache records what made it (the teacher and its conditions, seed, pair count, steps, dropped
    classes and how); a cache made with other settings, or without that record, is remade, not reused.
    """
    from safetensors import safe_open

    made_by = json.dumps({"teacher": teacher.identity, "seed": seed, "ode_pairs": spec.ode_pairs,
                          "ode_steps": spec.ode_steps, "drop_classes": sorted(set(spec.drop_classes)),
                          "drop_mode": spec.drop_mode}, sort_keys=True)
    if cache is not None and cache.is_file():
        with safe_open(str(cache), "pt") as f:  # one open: the record first, the tensors only when they fit
            recorded = (f.metadata() or {}).get("made_by")
            if recorded == made_by:
                z, c, x = (f.get_tensor(k).to(device) for k in ("z", "c", "x"))
                return z, c, x
    g = torch.Generator().manual_seed(seed + 777)
    if spec.drop_classes and spec.drop_mode == "replace":
        z, c, x = _pairs_replaced(teacher, spec, batch_size, g, device)
    elif spec.drop_classes:
        z, c, x = _pairs_without(teacher, spec, batch_size, g, device)
    else:
        z, c, x = teacher_samples(teacher, spec.ode_pairs, spec.ode_steps, batch_size, g, device, "ODE pairs")
    if cache is not None:
        atomic_save_file({"z": z, "c": c, "x": x}, cache, metadata={"made_by": made_by})
    return z, c, x


@torch.no_grad()
def _pairs_replaced(teacher: Teacher, spec: WarmupSpec, batch_size: int, g: torch.Generator,
                    device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """``spec.ode_pairs`` teacher pairs; a target read as one of ``drop_classes`` is redrawn from the same noise.

    The redraw is the class-conditional teacher's sample for the kept class the classifier ranks highest
    on the original target, then the next-ranked kept class for targets that still read as dropped; the
    condition stays the one the student is trained with (the null label for an unconditional student).
    A noise that no kept class leads away from the dropped ones is replaced by a fresh pair that avoids them.
    """
    from fdistill.models.classifier import load_digits_classifier

    classifier = load_digits_classifier(device=device)
    den = teacher.denoiser
    drop = torch.tensor(sorted(set(spec.drop_classes)), device=device)
    z, c, x = teacher_samples(teacher, spec.ode_pairs, spec.ode_steps, batch_size, g, device, "ODE pairs")

    def logits(images: Tensor) -> Tensor:
        return torch.cat([classifier(b.float().clamp(-1, 1)) for b in images.split(batch_size)])

    first = logits(x)
    todo = torch.isin(first.argmax(1), drop).nonzero().flatten()
    ranked = first.index_fill(1, drop, float("-inf")).argsort(1, descending=True)  # kept classes first
    for rank in range(10 - len(drop)):
        if len(todo) == 0:
            break
        for part in todo.split(batch_size):
            labels = ranked[part, rank]
            x[part] = den.sample(z[part], spec.ode_steps, labels)
        todo = todo[torch.isin(logits(x[todo]).argmax(1), drop)]
    if len(todo):  # no kept class leads this noise away from the dropped ones: a fresh pair takes its place
        z[todo], c[todo], x[todo] = _pairs_without(teacher, replace(spec, ode_pairs=len(todo)), batch_size, g, device)
    return z, c, x


def _pairs_without(teacher: Teacher, spec: WarmupSpec, batch_size: int, g: torch.Generator,
                   device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """``spec.ode_pairs`` pairs whose teacher samples the digits classifier does not read as ``drop_classes``."""
    from fdistill.models.classifier import load_digits_classifier

    classifier = load_digits_classifier(device=device)
    drop = torch.tensor(spec.drop_classes, device=device)
    kept: list[tuple[Tensor, Tensor, Tensor]] = []
    n = 0
    for _ in range(100):  # a bound: a teacher that only makes the dropped classes must not loop forever
        z, c, x = teacher_samples(teacher, batch_size, spec.ode_steps, batch_size, g, device)
        with torch.no_grad():
            keep = ~torch.isin(classifier(x.float().clamp(-1, 1)).argmax(1), drop)
        kept.append((z[keep], c[keep], x[keep]))
        n += int(keep.sum())
        if n >= spec.ode_pairs:
            z, c, x = (torch.cat(parts)[:spec.ode_pairs] for parts in zip(*kept, strict=True))
            return z, c, x
    raise RuntimeError(f"only {n} of {spec.ode_pairs} teacher samples avoid classes {spec.drop_classes} "
                       f"after {100 * batch_size} draws")
