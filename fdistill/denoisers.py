"""x̂0(x_t, t, condition) from any diffusers model plus a noise schedule.

Classifier-free guidance uses the Imagen/diffusers convention on x0-predictions:
x̂0 = x̂0_uncond + w (x̂0_cond − x̂0_uncond), so w = 1 is the plain conditional model and w = 0
the unconditional one. The unconditional input is ``null_condition``: for class-conditional
models the extra "no class" label the teacher was trained with (label dropout), for text models
the embedding of the empty prompt.

Feature taps for the discriminator head are forward hooks on named submodules; no forward
function is copied.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .gmm import GaussianMixture, GaussianMixtureDenoiser
from .schedules import NoiseSchedule

__all__ = ["Denoiser", "GaussianMixtureDenoiser", "GaussianMixture", "call_model"]


def call_model(model: nn.Module, sample: Tensor, timestep: Tensor, condition_key: str | None,
               condition: Tensor | None, **kwargs) -> Tensor:
    """Call a diffusers-style model and return its output tensor."""
    if condition_key is not None and condition is not None:
        kwargs[condition_key] = condition
    out = model(sample, timestep, **kwargs)
    if hasattr(out, "sample"):
        return out.sample
    return out[0] if isinstance(out, tuple) else out


class Denoiser(nn.Module):
    """Wrap ``model`` (raw output at (schedule.model_input(x_t), schedule.model_time(t))) into x̂0.

    Args:
        model: any diffusers model, e.g. ``UNet2DModel`` (``condition_key="class_labels"``),
            ``UNet2DConditionModel`` (``"encoder_hidden_states"``) or a Wan transformer.
        schedule: how the model was trained (EDM, VP, flow matching).
        condition_key: keyword under which the model takes its condition (None: unconditional).
        guidance_scale: default CFG weight w (1 = no guidance).
        null_condition: unconditional input for CFG: an int class label, or a tensor (1, ...) that
            is expanded to the batch (an empty-prompt embedding).
        feature_modules: names of submodules (``model.named_modules()``) whose outputs are tapped. A model
            with a ``feature_root`` (a family's wrapped denoiser) names them relative to it and reads each
            output with its ``feature_map`` (transformer tokens laid out as maps).
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: NoiseSchedule,
        condition_key: str | None = "class_labels",
        guidance_scale: float = 1.0,
        null_condition: int | Tensor | None = None,
        feature_modules: Sequence[str] = (),
    ):
        super().__init__()
        self.model, self.schedule = model, schedule
        self.condition_key, self.guidance_scale = condition_key, guidance_scale
        self.null_condition = null_condition
        self._features: dict[str, Tensor] = {}
        self.feature_modules = list(feature_modules)
        modules = dict(getattr(model, "feature_root", model).named_modules())
        missing = [n for n in self.feature_modules if n not in modules]
        if missing:
            sample = ", ".join(n for n in list(modules)[1:12])
            raise ValueError(f"feature modules {missing} not found in {type(model).__name__}; e.g.: {sample}, …")
        for name in self.feature_modules:
            modules[name].register_forward_hook(self._tap(name))

    def _tap(self, name: str):
        read = getattr(self.model, "feature_map", None)

        def hook(module, args, output):
            if read is not None:
                self._features[name] = read(output)
            else:
                self._features[name] = output[0] if isinstance(output, tuple) else output

        return hook

    def _null_like(self, condition: Tensor) -> Tensor:
        if self.null_condition is None:
            raise ValueError("guidance_scale != 1 needs a null_condition for the unconditional branch")
        if isinstance(self.null_condition, int):
            return torch.full_like(condition, self.null_condition)
        null = self.null_condition.to(condition)
        return null.expand(condition.shape[0], *null.shape[1:])

    def raw(self, x_t: Tensor, t: Tensor, condition: Tensor | None = None, **kwargs) -> Tensor:
        """The model's raw output at x_t (no guidance)."""
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        s = self.schedule
        return call_model(self.model, s.model_input(x_t, t), s.model_time(t), self.condition_key, condition,
                          **kwargs)

    def forward(self, x_t: Tensor, t: Tensor, condition: Tensor | None = None,
                guidance_scale: float | None = None, features: bool = False,
                **kwargs) -> Tensor | tuple[Tensor, list[Tensor]]:
        """x̂0(x_t, t, condition) with classifier-free guidance weight ``guidance_scale``.

        ``features=True`` also returns the tapped ``feature_modules`` outputs of the conditional
        branch of this same forward (one network evaluation for x̂0 and a discriminator's features).
        """
        w = self.guidance_scale if guidance_scale is None else guidance_scale
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        self._features.clear()
        if w == 1.0 or condition is None:
            x0 = self.schedule.to_x0(self.raw(x_t, t, condition, **kwargs), x_t, t)
        else:
            cond = torch.cat([self._null_like(condition), condition])
            x2, t2 = torch.cat([x_t, x_t]), torch.cat([t, t])
            x0_uncond, x0_cond = self.schedule.to_x0(self.raw(x2, t2, cond, **kwargs), x2, t2).chunk(2)
            x0 = x0_uncond + w * (x0_cond - x0_uncond)
        if not features:
            return x0
        if not self.feature_modules:
            raise ValueError("this Denoiser taps no features: pass feature_modules=[...]")
        b = x_t.shape[0]
        return x0, [self._features[n][-b:] for n in self.feature_modules]  # the conditional half under CFG

    @torch.no_grad()
    def sample(self, noise: Tensor, steps: int, condition: Tensor | None = None, guidance_scale: float | None = None,
               batch_size: int | None = None, clamp: float | None = None) -> Tensor:
        """Samples of the schedule's reference sampler (:meth:`NoiseSchedule.sample`, ``steps`` steps) from unit
        ``noise`` (B, ...), conditioned row by row on ``condition`` (B, ...), in batches of ``batch_size`` (all
        at once by default), on the noise's device; ``clamp`` limits the result to [−clamp, clamp]."""
        size = batch_size or noise.shape[0]
        out = []
        for i in range(0, noise.shape[0], size):
            c = None if condition is None else condition[i:i + size]
            x = self.schedule.sample(lambda x_t, t, c=c: self(x_t, t, c, guidance_scale=guidance_scale),
                                     noise[i:i + size], steps)
            out.append(x if clamp is None else x.clamp(-clamp, clamp))
        return torch.cat(out)

    def features(self, x_t: Tensor, t: Tensor, condition: Tensor | None = None, **kwargs) -> list[Tensor]:
        """Outputs of ``feature_modules`` for one conditional forward at (x_t, t)."""
        if not self.feature_modules:
            raise ValueError("this Denoiser taps no features: pass feature_modules=[...]")
        self._features.clear()
        self.raw(x_t, t, condition, **kwargs)
        return [self._features[n] for n in self.feature_modules]

