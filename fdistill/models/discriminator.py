"""The density-ratio discriminator: a small trainable head on a frozen network's features.

f-distill reads r = p_t/q_t off a classifier of noised real vs student samples. As in DMD2 and the
paper, the classifier reuses a diffusion network's features at (x_t, t): the frozen teacher's
(default) or the online fake score's, tapped by forward hooks (:meth:`Denoiser.features`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..denoisers import Denoiser

HEAD_KINDS = ("mlp", "conv")


def _conv_branch(channels: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.SiLU(), nn.Conv2d(hidden, hidden, 3, padding=1),
                         nn.SiLU(), nn.Conv2d(hidden, 1, 1))


def _mlp_branch(channels: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, 1))


class FeatureHead(nn.Module):
    """One branch per feature level → one logit each (mean over positions), averaged over levels.

    ``kind="mlp"``: a per-position MLP; accepts (B, C), (B, C, *spatial) or transformer tokens
    (B, L, C) (``channels_last=True``). ``kind="conv"``: two 3×3 convolutions and a 1×1 logit map on
    (B, C, H, W) feature maps, so each level's logit sees local structure, not single positions.
    """

    def __init__(self, channels: Sequence[int], hidden: int = 64, channels_last: bool = False, kind: str = "mlp"):
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"discriminator head {kind!r} is not one of {HEAD_KINDS}")
        if kind == "conv" and channels_last:
            raise ValueError("a conv head needs feature maps (B, C, H, W), not tokens (B, L, C): use head 'mlp'")
        self.channels_last, self.kind = channels_last, kind
        make = _conv_branch if kind == "conv" else _mlp_branch
        self.branches = nn.ModuleList(make(c, hidden) for c in channels)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """features: as many maps as ``channels`` → logits (B,)."""
        if len(features) != len(self.branches):
            raise ValueError(f"expected {len(self.branches)} feature maps, got {len(features)}")
        total = 0
        for f, branch in zip(features, self.branches, strict=True):
            f = f.float()
            if self.kind == "conv":
                if f.ndim != 4:
                    raise ValueError(f"a conv head needs (B, C, H, W) feature maps, got shape {tuple(f.shape)}")
            elif f.ndim > 2 and not self.channels_last:
                f = f.flatten(2).transpose(1, 2)  # (B, positions, C)
            logits = branch(f)  # (B, [positions,] 1) or (B, 1, H, W)
            total = total + logits.flatten(1).mean(1)
        return total / len(self.branches)


class FeatureDiscriminator(nn.Module):
    """D(x_t, t, condition) = head(features of ``denoiser`` at (x_t, t, condition)).

    Only the head's parameters are the discriminator's own; when ``denoiser`` is the frozen teacher
    its weights never change, when it is the fake score its trunk trains with the critic.
    """

    def __init__(self, denoiser: Denoiser, head: FeatureHead):
        super().__init__()
        self.denoiser, self.head = denoiser, head

    @classmethod
    def build(cls, denoiser: Denoiser, sample: Tensor, t: Tensor, condition: Tensor | None = None,
              hidden: int = 64, kind: str = "mlp") -> FeatureDiscriminator:
        """Infer the feature channels from one forward at (sample, t, condition)."""
        feats = denoiser.features(sample, t, condition)
        channels_last = [f.ndim == 3 for f in feats]
        if any(channels_last) and not all(channels_last):
            raise ValueError("mixing token features (B, L, C) with feature maps (B, C, ...) is not supported")
        channels = [f.shape[-1] if channels_last[0] else f.shape[1] for f in feats]
        return cls(denoiser, FeatureHead(channels, hidden, channels_last=all(channels_last), kind=kind))

    def forward(self, x_t: Tensor, t: Tensor, condition: Tensor | None = None) -> Tensor:
        return self.head(self.denoiser.features(x_t, t, condition))
