"""f-divergences D_f(p‖q) = E_q[f(p/q)] and their distribution-matching weights h(r) = r² f''(r).

The f-distill gradient (Xu, Nie, Vahdat 2025, Thm. 1) is

    ∇θ D_f(p_t‖q_t) = E[ h(r) (∇log q_t(x_t) − ∇log p_t(x_t))ᵀ ∂x_t/∂θ ],   r = p_t(x_t)/q_t(x_t),

so a divergence enters training only through h: it is a registry entry, never a code path.
Reverse-KL has h ≡ 1, which is DMD.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

TensorFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class FDivergence:
    """A convex f with f(1) = 0 and its weighting h(r) = r² f''(r)."""

    name: str
    f: TensorFn
    h: TensorFn

    def __call__(self, r: Tensor) -> Tensor:
        return self.h(r)

    @property
    def constant_h(self) -> bool:
        """h does not depend on r (reverse-KL, α = 0): such a divergence needs no density ratio."""
        r = torch.tensor([0.1, 0.5, 1.0, 2.0, 10.0])
        h = self.h(r)
        return bool(torch.allclose(h, h[2].expand_as(h)))


def _log(r: Tensor) -> Tensor:
    return torch.log(r)


_TABLE: dict[str, tuple[TensorFn, TensorFn]] = {
    "reverse_kl": (lambda r: -_log(r), lambda r: torch.ones_like(r)),
    "softened_reverse_kl": (
        lambda r: (r + 1) * _log((r + 1) / (2 * r)),
        lambda r: 1 / (r + 1),
    ),
    "jensen_shannon": (
        lambda r: r * _log(r) - (r + 1) * _log((r + 1) / 2),
        lambda r: r / (r + 1),
    ),
    "squared_hellinger": (lambda r: 1 - r.sqrt(), lambda r: r.sqrt() / 4),
    "forward_kl": (lambda r: r * _log(r), lambda r: r),
    "jeffreys": (lambda r: (r - 1) * _log(r), lambda r: r + 1),
    "neyman_chi2": (lambda r: (1 - r) ** 2 / r, lambda r: 2 / r),
}

ALIASES: dict[str, str] = {
    "rkl": "reverse_kl",
    "dmd": "reverse_kl",
    "srkl": "softened_reverse_kl",
    "js": "jensen_shannon",
    "jsd": "jensen_shannon",
    "sh": "squared_hellinger",
    "hellinger": "squared_hellinger",
    "fkl": "forward_kl",
    "kl": "forward_kl",
    "jf": "jeffreys",
    "chi2": "neyman_chi2",
    "nchi2": "neyman_chi2",
}

_ALPHA = re.compile(r"^alpha[:=]?(-?\d+(?:\.\d*)?(?:e-?\d+)?)$")


def alpha_divergence(alpha: float) -> FDivergence:
    """α-family f(r) = (r^α − αr − (1 − α)) / (α(α − 1)), h(r) = r^α.

    α = 0 and α = 1 are the limits −log r + r − 1 and r log r − r + 1: reverse and forward KL up
    to a term linear in (r − 1), which has zero expectation under q and changes neither D_f nor h.
    """
    a = float(alpha)
    if a == 0.0:
        f = lambda r: -_log(r) + r - 1
    elif a == 1.0:
        f = lambda r: r * _log(r) - r + 1
    else:
        f = lambda r: (r**a - a * r - (1 - a)) / (a * (a - 1))
    return FDivergence(f"alpha:{a:g}", f, lambda r: r**a)


def available_divergences() -> list[str]:
    """Canonical names, aliases, and the α-family pattern."""
    return [*_TABLE, *ALIASES, "alpha:<float>"]


def get_divergence(name: str) -> FDivergence:
    """Look up an f-divergence by canonical name, alias (``js``, ``fkl``…) or ``alpha:<α>``."""
    key = name.strip().lower()
    key = key if key.startswith("alpha") else key.replace("-", "_")
    key = ALIASES.get(key, key)
    if key in _TABLE:
        f, h = _TABLE[key]
        return FDivergence(key, f, h)
    m = _ALPHA.match(key)
    if m:
        return alpha_divergence(float(m.group(1)))
    raise ValueError(f"unknown divergence {name!r}; valid: {', '.join(available_divergences())}")
