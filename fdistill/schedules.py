"""Noise schedules: x_t = α_t x_0 + σ_t ε, in the three parameterisations fdistill supports.

Each schedule knows its own time variable ``t`` and how a network sees it:

* :class:`EDMSchedule` (Karras et al. 2022): t = σ, α ≡ 1, preconditioned x0-prediction.
* :class:`VPSchedule` (DDPM): t is the discrete timestep in [0, T), α_t² = ᾱ_t taken from diffusers'
  ``DDPMScheduler``; the model predicts ε, v or x0.
* :class:`FlowMatchingSchedule` (rectified flow, SD3/Wan): t ∈ [0, 1], α = 1 − t, σ = t, velocity
  prediction v = ε − x0, with the timestep shift of diffusers' ``FlowMatchEulerDiscreteScheduler``.

Every schedule converts a model output to x̂0 and to a score, draws training times, and runs a
reference multi-step sampler (Heun for EDM, DDIM otherwise: DDIM with an x0-prediction is the Euler
step of the probability-flow ODE in any parameterisation).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

X0Fn = Callable[[Tensor, Tensor], Tensor]
"""x̂0(x_t, t): a denoiser in x0-prediction form."""


def expand_t(t: Tensor, x: Tensor) -> Tensor:
    """Broadcast times to ``x``.

    ``t`` is a scalar, (B,) for one time per sample, or (B, F) for one time per video frame with
    ``x`` of shape (B, C, F, H, W).
    """
    t = torch.as_tensor(t, device=x.device)
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()  # times stay >= fp32: in bf16, timestep 999 rounds to 1000
    if t.ndim == 0:
        return t
    if t.ndim == 1:
        return t.reshape(-1, *([1] * (x.ndim - 1)))
    if t.ndim == 2 and x.ndim == 5:
        return t.reshape(t.shape[0], 1, t.shape[1], 1, 1)
    raise ValueError(f"times of shape {tuple(t.shape)} do not broadcast to data of shape {tuple(x.shape)}")


class NoiseSchedule(ABC):
    """x_t = α_t x0 + σ_t ε with a network-specific input scaling and prediction target."""

    prediction_type: str
    prediction_types: tuple[str, ...] = ()

    def __init__(self, prediction_type: str):
        if prediction_type not in self.prediction_types:
            raise ValueError(
                f"{type(self).__name__} does not support prediction_type={prediction_type!r}; "
                f"valid: {', '.join(self.prediction_types)}"
            )
        self.prediction_type = prediction_type

    # -- the marginal ---------------------------------------------------------------------
    @abstractmethod
    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(α_t, σ_t) for times ``t`` (any shape, float)."""

    @property
    @abstractmethod
    def t_max(self) -> float:
        """The noisiest time: a one-step student maps pure noise at t_max to x0."""

    @property
    @abstractmethod
    def t_min(self) -> float:
        """The cleanest time used in training and sampling."""

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = α_t x0 + σ_t ε."""
        alpha, sigma = self.alpha_sigma(expand_t(t, x0))
        return alpha * x0 + sigma * noise

    def prior(self, noise: Tensor) -> Tensor:
        """x at t_max from unit Gaussian noise: σ_max ε for EDM, ε otherwise (α_max ≈ 0)."""
        alpha, sigma = self.alpha_sigma(torch.tensor(self.t_max, dtype=noise.dtype))
        return sigma * noise

    # -- the network's view ---------------------------------------------------------------
    def model_input(self, x_t: Tensor, t: Tensor) -> Tensor:
        """What the network receives as its sample (EDM scales by c_in)."""
        return x_t

    def model_time(self, t: Tensor) -> Tensor:
        """What the network receives as its timestep."""
        return t

    @abstractmethod
    def to_x0(self, output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Convert a raw network output at (x_t, t) into x̂0."""

    def score(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """∇ log p_t(x_t) = (α_t x̂0 − x_t) / σ_t² from an x0-prediction."""
        alpha, sigma = self.alpha_sigma(expand_t(t, x_t))
        return (alpha * x0 - x_t) / sigma**2

    def x0_loss_weight(self, t: Tensor) -> Tensor:
        """Weight on ‖x̂0 − x0‖² that equals the schedule's native training loss."""
        alpha, sigma = self.alpha_sigma(t)
        return (alpha / sigma) ** 2

    # -- training and sampling ------------------------------------------------------------
    @abstractmethod
    def sample_training_t(
        self, batch_size: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> Tensor:
        """Draw (B,) training times from the schedule's training distribution."""

    @abstractmethod
    def sampling_times(self, num_steps: int) -> Tensor:
        """Descending times t_0 = t_max > … > t_{N−1}, followed by a terminal 0 (length N + 1)."""

    def t_fraction(self, t: Tensor) -> Tensor:
        """Position of t in [0, 1] from t_min to t_max (for time-binned statistics)."""
        return ((t - self.t_min) / (self.t_max - self.t_min)).clamp(0, 1)

    def ddim_step(self, x_t: Tensor, x0: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
        """Deterministic DDIM step from t to t_next given x̂0: keeps the implied ε fixed."""
        alpha, sigma = self.alpha_sigma(expand_t(t, x_t))
        alpha_n, sigma_n = self.alpha_sigma(expand_t(t_next, x_t))
        eps = (x_t - alpha * x0) / sigma
        return alpha_n * x0 + sigma_n * eps

    @torch.no_grad()
    def sample(self, x0_fn: X0Fn, noise: Tensor, num_steps: int, progress: bool = False) -> Tensor:
        """Reference sampler from unit noise: DDIM (probability-flow Euler) over ``sampling_times``."""
        times = self.sampling_times(num_steps).to(noise.device)
        x = self.prior(noise)
        for i in _steps(num_steps, progress):
            t = times[i].expand(x.shape[0])
            x0 = x0_fn(x, t)
            x = x0 if times[i + 1] == 0 else self.ddim_step(x, x0, t, times[i + 1].expand(x.shape[0]))
        return x

    def nfe(self, num_steps: int) -> int:
        """Network evaluations of :meth:`sample` for ``num_steps``."""
        return num_steps


def _steps(n: int, progress: bool):
    if not progress:
        return range(n)
    from tqdm.auto import tqdm

    return tqdm(range(n), desc="sampling", leave=False)


class EDMSchedule(NoiseSchedule):
    """EDM (Karras et al. 2022): t = σ, x_t = x0 + σ ε, D(x; σ) = c_skip x + c_out F(c_in x, c_noise).

    Constants and the ρ-spaced sampling grid follow the paper (and diffusers' ``EDMEulerScheduler``).
    Training σ is log-normal: ln σ ~ N(P_mean, P_std²).
    """

    prediction_types = ("edm",)

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        rho: float = 7.0,
        P_mean: float = -1.2,
        P_std: float = 1.2,
        prediction_type: str = "edm",
    ):
        super().__init__(prediction_type)
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data
        self.rho, self.P_mean, self.P_std = rho, P_mean, P_std

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(t), t

    @property
    def t_max(self) -> float:
        return self.sigma_max

    @property
    def t_min(self) -> float:
        return self.sigma_min

    def t_fraction(self, t: Tensor) -> Tensor:
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return ((t.clamp_min(1e-12).log() - lo) / (hi - lo)).clamp(0, 1)

    def _c(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        return c_skip, c_out, c_in

    def model_input(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self._c(expand_t(t, x_t))[2] * x_t

    def model_time(self, t: Tensor) -> Tensor:
        return t.log() / 4

    def to_x0(self, output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        c_skip, c_out, _ = self._c(expand_t(t, x_t))
        return c_skip * x_t + c_out * output

    def x0_loss_weight(self, t: Tensor) -> Tensor:
        return (t**2 + self.sigma_data**2) / (t * self.sigma_data) ** 2

    def sample_training_t(self, batch_size, generator=None, device="cpu"):
        z = torch.randn(batch_size, generator=generator, device=device)
        return (z * self.P_std + self.P_mean).exp()

    def sampling_times(self, num_steps: int) -> Tensor:
        i = torch.arange(num_steps, dtype=torch.float64)
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        steps = (hi + i / max(num_steps - 1, 1) * (lo - hi)) ** self.rho
        return torch.cat([steps, torch.zeros(1, dtype=torch.float64)]).float()

    @torch.no_grad()
    def sample(self, x0_fn: X0Fn, noise: Tensor, num_steps: int, progress: bool = False) -> Tensor:
        """Heun's 2nd-order sampler (EDM Algorithm 1, deterministic): 2N − 1 evaluations."""
        times = self.sampling_times(num_steps).to(noise.device)
        x = self.prior(noise)
        for i in _steps(num_steps, progress):
            t, t_next = times[i], times[i + 1]
            d = (x - x0_fn(x, t.expand(x.shape[0]))) / t
            x_next = x + (t_next - t) * d
            if t_next > 0:
                d_next = (x_next - x0_fn(x_next, t_next.expand(x.shape[0]))) / t_next
                x_next = x + (t_next - t) * (d + d_next) / 2
            x = x_next
        return x

    def nfe(self, num_steps: int) -> int:
        return 2 * num_steps - 1


class VPSchedule(NoiseSchedule):
    """Variance-preserving DDPM: α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), ᾱ from diffusers' ``DDPMScheduler``.

    ``t`` is the (float) discrete timestep in [0, T); ᾱ is linearly interpolated between integers.
    The beta options are ``DDPMScheduler``'s (SD1.5: ``scaled_linear``, 0.00085, 0.012), including
    ``trained_betas`` and ``rescale_betas_zero_snr`` (zero terminal SNR, ᾱ_{T−1} = 0: x_{T−1} is pure
    noise). At zero terminal SNR an ε-prediction cannot give x̂0 at t_max (x̂0 = (x_t − σ ε̂)/α divides
    by α = 0; diffusers' DDIM returns NaN there), so that pairing is refused: such teachers predict
    v or x0.
    """

    prediction_types = ("epsilon", "v_prediction", "sample")

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        prediction_type: str = "epsilon",
        trained_betas: Sequence[float] | None = None,
        rescale_betas_zero_snr: bool = False,
    ):
        super().__init__(prediction_type)
        from diffusers import DDPMScheduler

        try:
            sched = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                                  beta_schedule=beta_schedule, trained_betas=trained_betas,
                                  rescale_betas_zero_snr=rescale_betas_zero_snr)
        except NotImplementedError:
            raise ValueError(f"beta_schedule {beta_schedule!r} is not supported; valid: {', '.join(BETA_SCHEDULES)} "
                             "(or trained_betas)") from None
        self.num_train_timesteps = num_train_timesteps
        self.beta_start, self.beta_end, self.beta_schedule = beta_start, beta_end, beta_schedule
        self.trained_betas = None if trained_betas is None else [float(b) for b in trained_betas]
        self.rescale_betas_zero_snr = rescale_betas_zero_snr
        self.alphas_cumprod = sched.alphas_cumprod.double()
        if self.alphas_cumprod[-1] == 0 and prediction_type == "epsilon":
            raise ValueError("prediction_type='epsilon' is undefined at zero terminal SNR (ᾱ_T = 0, "
                             f"rescale_betas_zero_snr={rescale_betas_zero_snr}): x̂0 = (x_t − σ ε̂)/α divides by 0 "
                             "at t_max; zero-SNR teachers predict 'v_prediction' or 'sample'")

    @classmethod
    def from_scheduler(cls, scheduler, prediction_type: str | None = None) -> VPSchedule:
        """Build from a diffusers DDPM-family scheduler's beta options (e.g. an SD1.5 pipeline's).

        The result's ᾱ is checked against the scheduler's own ``alphas_cumprod``: an option that
        changes the noise levels in a way these beta options do not express is refused, not ignored.
        """
        c = scheduler.config
        schedule = cls(c.num_train_timesteps, c.beta_start, c.beta_end, c.beta_schedule,
                       prediction_type or c.get("prediction_type", "epsilon"), c.get("trained_betas"),
                       c.get("rescale_betas_zero_snr", False))
        theirs = scheduler.alphas_cumprod.double()
        # atol: Euler-type schedulers replace a zero terminal ᾱ by 2⁻²⁴ ≈ 6e-8 so that their σ stays finite
        if not torch.allclose(schedule.alphas_cumprod, theirs, rtol=1e-5, atol=1e-7):
            diff = (schedule.alphas_cumprod - theirs).abs().max().item()
            raise ValueError(f"{type(scheduler).__name__}'s noise levels differ from its beta options' "
                             f"(max |Δᾱ| = {diff:.3g}): an option fdistill does not read changes them")
        return schedule

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        ac = self.alphas_cumprod.to(t.device)
        tc = t.double().clamp(0, self.num_train_timesteps - 1)
        lo = tc.floor().long()
        hi = (lo + 1).clamp_max(self.num_train_timesteps - 1)
        abar = torch.lerp(ac[lo], ac[hi], tc - lo)
        dtype = t.dtype if t.is_floating_point() else torch.float32
        return abar.sqrt().to(dtype), (1 - abar).sqrt().to(dtype)

    @property
    def t_max(self) -> float:
        return float(self.num_train_timesteps - 1)

    @property
    def t_min(self) -> float:
        return 0.0

    def prior(self, noise: Tensor) -> Tensor:
        return noise

    def to_x0(self, output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = self.alpha_sigma(expand_t(t, x_t))
        if self.prediction_type == "epsilon":
            return (x_t - sigma * output) / alpha
        if self.prediction_type == "v_prediction":
            return alpha * x_t - sigma * output
        return output

    def x0_loss_weight(self, t: Tensor) -> Tensor:
        """ε: (α/σ)²; v: 1/σ² (α² + σ² = 1, so ‖v̂ − v‖² = ‖x̂0 − x0‖²/σ²); sample: 1."""
        alpha, sigma = self.alpha_sigma(t)
        if self.prediction_type == "epsilon":
            return (alpha / sigma) ** 2
        if self.prediction_type == "v_prediction":
            return 1 / sigma**2
        return torch.ones_like(sigma)

    def sample_training_t(self, batch_size, generator=None, device="cpu"):
        u = torch.rand(batch_size, generator=generator, device=device)
        return (u * self.num_train_timesteps).floor().clamp_max(self.num_train_timesteps - 1)

    def sampling_times(self, num_steps: int) -> Tensor:
        """diffusers' "trailing" spacing: T−1, …, T/N − 1, then the terminal 0 ("t = −1", x0)."""
        step = self.num_train_timesteps / num_steps
        steps = (torch.arange(self.num_train_timesteps, 0, -step).round() - 1).float()
        return torch.cat([steps, torch.zeros(1)])


class FlowMatchingSchedule(NoiseSchedule):
    """Rectified flow: x_t = (1 − t) x0 + t ε, velocity v = ε − x0 (SD3, Wan).

    ``shift`` warps times as diffusers' ``FlowMatchEulerDiscreteScheduler`` does:
    t' = shift·t / (1 + (shift − 1) t). The network's timestep is 1000·t.
    """

    prediction_types = ("flow", "sample")

    def __init__(self, shift: float = 1.0, prediction_type: str = "flow", t_min: float = 1e-3,
                 logit_mean: float = 0.0, logit_std: float = 1.0):
        super().__init__(prediction_type)
        if shift <= 0:
            raise ValueError(f"shift must be positive, got {shift}")
        self.shift, self._t_min = shift, t_min
        self.logit_mean, self.logit_std = logit_mean, logit_std

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return 1 - t, t

    @property
    def t_max(self) -> float:
        return 1.0

    @property
    def t_min(self) -> float:
        return self._t_min

    def x0_loss_weight(self, t: Tensor) -> Tensor:
        """Velocity MSE: x̂0 − x0 = −t (v̂ − v), so ‖v̂ − v‖² = ‖x̂0 − x0‖² / t² (1 for x0 prediction)."""
        return torch.ones_like(t) if self.prediction_type == "sample" else 1 / t**2

    def shift_t(self, t: Tensor) -> Tensor:
        return self.shift * t / (1 + (self.shift - 1) * t)

    def model_time(self, t: Tensor) -> Tensor:
        return t * 1000

    def to_x0(self, output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        if self.prediction_type == "sample":
            return output
        return x_t - expand_t(t, x_t) * output

    def sample_training_t(self, batch_size, generator=None, device="cpu"):
        """Logit-normal times (SD3), shifted, clipped to [t_min, 1]."""
        z = torch.randn(batch_size, generator=generator, device=device) * self.logit_std + self.logit_mean
        return self.shift_t(torch.sigmoid(z)).clamp(self.t_min, 1.0)

    def sampling_times(self, num_steps: int) -> Tensor:
        t = torch.linspace(1.0, 0.0, num_steps + 1)
        return self.shift_t(t)


SCHEDULES: dict[str, type[NoiseSchedule]] = {
    "edm": EDMSchedule,
    "vp": VPSchedule,
    "flow": FlowMatchingSchedule,
}


def get_schedule(name: str, **kwargs) -> NoiseSchedule:
    """Build a schedule by name (``edm``, ``vp``, ``flow``) with its keyword arguments."""
    try:
        cls = SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}") from None
    return cls(**kwargs)


BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")
"""``beta_schedule`` values of diffusers' ``DDPMScheduler``, which computes :class:`VPSchedule`'s ᾱ."""
DDIM_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")

EDM_SCHEDULERS = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
VP_SCHEDULERS = (
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "DEISMultistepScheduler", "UniPCMultistepScheduler",
)
"""DDPM-family schedulers; with ``use_flow_sigmas=True`` (Wan's UniPC / DPM-Solver) they are flow matching."""

# Options that would change the noise levels, the network's time input or its output in a way no fdistill
# schedule expresses, with the values that leave them off. Set to anything else, they are refused by name.
_EDM_OPTIONS = {
    "sigma_schedule": (("karras",), "fdistill's EDM grid is Karras' ρ-spaced one"),
    "prediction_type": (("epsilon",), "diffusers' 'epsilon' is EDM's F-preconditioning; others change c_out"),
}
_FLOW_OPTIONS = {
    "use_dynamic_shifting": ((False,), "a resolution-dependent shift; fdistill's flow schedule has one fixed "
                                       "shift: set a fixed shift instead"),
    "shift_terminal": ((None, 0), "a step grid stretched to end at shift_terminal"),
    "use_karras_sigmas": ((False,), "a Karras step grid instead of the shifted linear one"),
    "use_exponential_sigmas": ((False,), "an exponential step grid instead of the shifted linear one"),
    "use_beta_sigmas": ((False,), "a beta-distribution step grid instead of the shifted linear one"),
    "invert_sigmas": ((False,), "inverted noise levels 1 − σ (Mochi)"),
    "num_train_timesteps": ((1000,), "the flow schedule feeds the network the timestep 1000·σ"),
}
_VP_OPTIONS = {
    "variance_type": ((None, "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log"),
                      "a learned variance: the network's output holds a variance as well"),
    "timestep_type": (("discrete",), "the network's timestep would be 0.25·log σ"),
}


def _refuse_unsupported(name: str, config, options: dict[str, tuple[tuple, str]]) -> None:
    for key, (supported, why) in options.items():
        value = config.get(key, supported[0])
        if value not in supported:
            raise ValueError(f"{name}: {key}={value!r} is not supported yet ({why}); supported: "
                             f"{', '.join(map(repr, supported))}")


def schedule_from_scheduler(scheduler) -> NoiseSchedule:
    """Our schedule for a diffusers scheduler (so pipelines carry a standard ``scheduler`` component).

    ``EDM_SCHEDULERS`` → EDM; ``FLOW_SCHEDULERS`` → flow matching with their ``shift``; a
    ``VP_SCHEDULERS`` member → VP with its ᾱ (every beta option, ``trained_betas`` and
    ``rescale_betas_zero_snr`` included, checked against the scheduler's own ``alphas_cumprod``), or,
    with ``use_flow_sigmas=True`` and ``prediction_type="flow_prediction"`` (Wan's UniPC), flow matching
    with its ``flow_shift``. Options that change the noise levels in a way the schedule cannot express
    (dynamic shifting, a terminal shift, Karras-type grids of a flow schedule, learned variances, …)
    raise a ValueError naming them. VP options that only choose where a sampler evaluates the network
    (``timestep_spacing``, ``steps_offset``, Karras-type sigma grids, solver settings) leave ᾱ_t as it
    is; fdistill's reference sampler keeps its own trailing DDIM grid.
    """
    c = scheduler.config
    name = type(scheduler).__name__
    if name in EDM_SCHEDULERS:
        _refuse_unsupported(name, c, _EDM_OPTIONS)
        return EDMSchedule(sigma_min=c.sigma_min, sigma_max=c.sigma_max, sigma_data=c.sigma_data, rho=c.rho)
    if name in FLOW_SCHEDULERS:
        _refuse_unsupported(name, c, _FLOW_OPTIONS)
        return FlowMatchingSchedule(shift=c.shift)
    if name not in VP_SCHEDULERS:
        raise ValueError(f"no fdistill schedule for {name}; supported: "
                         f"{', '.join(EDM_SCHEDULERS + FLOW_SCHEDULERS + VP_SCHEDULERS)}")
    flow_prediction = c.get("prediction_type") == "flow_prediction"
    if c.get("use_flow_sigmas", False) != flow_prediction:
        raise ValueError(f"{name}: use_flow_sigmas={c.get('use_flow_sigmas', False)} with prediction_type="
                         f"{c.get('prediction_type')!r}: a flow-matching model (Wan) sets use_flow_sigmas=True, "
                         "prediction_type='flow_prediction' and flow_shift together")
    if flow_prediction:
        _refuse_unsupported(name, c, _FLOW_OPTIONS)
        return FlowMatchingSchedule(shift=c.flow_shift)
    _refuse_unsupported(name, c, _VP_OPTIONS)
    return VPSchedule.from_scheduler(scheduler)


def scheduler_for(schedule: NoiseSchedule):
    """A diffusers scheduler whose config round-trips to ``schedule`` (for ``save_pretrained``)."""
    from diffusers import DDIMScheduler, DDPMScheduler, EDMEulerScheduler, FlowMatchEulerDiscreteScheduler

    if isinstance(schedule, EDMSchedule):
        return EDMEulerScheduler(sigma_min=schedule.sigma_min, sigma_max=schedule.sigma_max,
                                 sigma_data=schedule.sigma_data, rho=schedule.rho)
    if isinstance(schedule, FlowMatchingSchedule):
        return FlowMatchEulerDiscreteScheduler(shift=schedule.shift)
    if isinstance(schedule, VPSchedule):
        # DDIM (the deterministic few-step sampler) where its betas can say it, else DDPM, which computed ᾱ
        ddim = schedule.trained_betas is not None or schedule.beta_schedule in DDIM_BETA_SCHEDULES
        return (DDIMScheduler if ddim else DDPMScheduler)(
            num_train_timesteps=schedule.num_train_timesteps, beta_start=schedule.beta_start,
            beta_end=schedule.beta_end, beta_schedule=schedule.beta_schedule, trained_betas=schedule.trained_betas,
            rescale_betas_zero_snr=schedule.rescale_betas_zero_snr, prediction_type=schedule.prediction_type,
            timestep_spacing="trailing")
    raise TypeError(f"no diffusers scheduler for {type(schedule).__name__}")
