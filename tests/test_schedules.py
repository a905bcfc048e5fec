import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EDMEulerScheduler, FlowMatchEulerDiscreteScheduler

from fdistill.gmm import GaussianMixture, GaussianMixtureDenoiser
from fdistill.schedules import EDMSchedule, FlowMatchingSchedule, VPSchedule, get_schedule


def test_vp_constants_come_from_diffusers():
    s = VPSchedule(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    t = torch.tensor([0.0, 10.0, 500.0, 999.0])
    alpha, sigma = s.alpha_sigma(t)
    torch.testing.assert_close(alpha**2, ref[t.long()].float())
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones(4))


def test_vp_add_noise_matches_diffusers():
    s, ref = VPSchedule(), DDPMScheduler()
    x0, eps = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([5, 300, 990])
    torch.testing.assert_close(s.add_noise(x0, eps, t.float()), ref.add_noise(x0, eps, t))


def test_vp_trailing_timesteps_match_ddim():
    ref = DDIMScheduler(timestep_spacing="trailing")
    ref.set_timesteps(4)
    assert VPSchedule().sampling_times(4)[:-1].long().tolist() == ref.timesteps.tolist()


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
def test_vp_to_x0_inverts_each_target(pred):
    s = VPSchedule(prediction_type=pred)
    x0, eps, t = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([1.0, 100.0, 600.0, 999.0])
    x_t = s.add_noise(x0, eps, t)
    a, sg = s.alpha_sigma(t[:, None])
    target = {"epsilon": eps, "v_prediction": a * eps - sg * x0, "sample": x0}[pred]
    torch.testing.assert_close(s.to_x0(target, x_t, t), x0, rtol=1e-4, atol=1e-4)


def test_edm_sigmas_match_diffusers():
    ref = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, rho=7.0)
    ref.set_timesteps(18)
    torch.testing.assert_close(EDMSchedule().sampling_times(18), ref.sigmas.float(), rtol=1e-5, atol=1e-6)


def test_edm_preconditioning_matches_diffusers():
    ref, s = EDMEulerScheduler(sigma_data=0.5), EDMSchedule()
    sigma = torch.tensor([0.01, 1.0, 40.0])
    x, out = torch.randn(3, 2), torch.randn(3, 2)
    torch.testing.assert_close(s.model_input(x, sigma), ref.precondition_inputs(x, sigma[:, None]))
    torch.testing.assert_close(s.model_time(sigma), ref.precondition_noise(sigma))
    torch.testing.assert_close(s.to_x0(out, x, sigma), ref.precondition_outputs(x, out, sigma[:, None]))


def test_flow_shift_matches_diffusers():
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ref.set_timesteps(sigmas=torch.linspace(1, 0, 9)[:-1].tolist())  # SD3/Wan pipelines' unshifted grid
    torch.testing.assert_close(FlowMatchingSchedule(shift=3.0).sampling_times(8), ref.sigmas.float(),
                               rtol=1e-5, atol=1e-6)


def test_flow_velocity_to_x0():
    s = FlowMatchingSchedule()
    x0, eps, t = torch.randn(5, 3), torch.randn(5, 3), torch.rand(5)
    torch.testing.assert_close(s.to_x0(eps - x0, s.add_noise(x0, eps, t), t), x0)


@pytest.mark.parametrize("schedule", [EDMSchedule(), VPSchedule(), FlowMatchingSchedule(shift=2.0)])
def test_score_of_exact_denoiser_is_grad_log_density(schedule):
    gmm = GaussianMixture.ring(4, radius=2.0, std=0.5)
    den = GaussianMixtureDenoiser(gmm, schedule)
    t = schedule.sampling_times(10)[3].expand(6)
    x = torch.randn(6, 2, requires_grad=True)
    alpha, sigma = schedule.alpha_sigma(t)
    (grad,) = torch.autograd.grad(gmm.log_prob(x, alpha, sigma).sum(), x)
    torch.testing.assert_close(schedule.score(den(x.detach(), t), x.detach(), t), grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("schedule", "steps"), [(EDMSchedule(), 32), (VPSchedule(), 200),
                                                 (FlowMatchingSchedule(shift=3.0), 200)])
def test_reference_sampler_reproduces_the_mixture(schedule, steps):
    gmm = GaussianMixture([[-3.0, 0.0], [3.0, 0.0]], 0.3, [0.75, 0.25])
    x = schedule.sample(GaussianMixtureDenoiser(gmm, schedule), torch.randn(4000, 2, generator=torch.Generator().manual_seed(0)), steps)
    k = gmm.assign(x)
    assert (k >= 0).float().mean() > 0.97
    assert abs((k == 0).float().mean().item() - 0.75) < 0.04
    assert abs(x[k == 0].std(0).mean().item() - 0.3) < 0.05


def test_edm_sampler_nfe():
    assert EDMSchedule().nfe(18) == 35 and VPSchedule().nfe(10) == 10


def test_per_frame_times_broadcast_over_video():
    s = FlowMatchingSchedule()
    x0, eps = torch.randn(2, 3, 4, 5, 5), torch.randn(2, 3, 4, 5, 5)
    t = torch.rand(2, 4)
    x_t = s.add_noise(x0, eps, t)
    torch.testing.assert_close(x_t[:, :, 1], (1 - t[:, 1, None, None, None]) * x0[:, :, 1] + t[:, 1, None, None, None] * eps[:, :, 1])


def test_training_times_in_range():
    g = torch.Generator().manual_seed(0)
    for s in (EDMSchedule(), VPSchedule(), FlowMatchingSchedule(shift=3.0)):
        t = s.sample_training_t(1000, g)
        assert t.shape == (1000,) and (t >= 0).all()
        assert (s.t_fraction(t) >= 0).all() and (s.t_fraction(t) <= 1).all()
    assert math.isclose(EDMSchedule().sample_training_t(20000, g).log().mean().item(), -1.2, abs_tol=0.05)


def test_bad_schedule_names():
    with pytest.raises(ValueError, match="unknown schedule 'ddpm'.*edm, vp, flow"):
        get_schedule("ddpm")
    with pytest.raises(ValueError, match="prediction_type='x0'.*epsilon"):
        VPSchedule(prediction_type="x0")


@pytest.mark.parametrize("schedule", [EDMSchedule(sigma_max=40.0), VPSchedule(prediction_type="v_prediction"),
                                      FlowMatchingSchedule(shift=3.0)])
def test_schedule_round_trips_through_a_diffusers_scheduler(schedule):
    from fdistill.schedules import schedule_from_scheduler, scheduler_for

    back = schedule_from_scheduler(scheduler_for(schedule))
    assert type(back) is type(schedule) and back.prediction_type == schedule.prediction_type
    t = schedule.sampling_times(5)[:-1]
    for a, b in zip(back.alpha_sigma(t), schedule.alpha_sigma(t), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("schedule", [EDMSchedule(), VPSchedule(), VPSchedule(prediction_type="v_prediction"),
                                      FlowMatchingSchedule(shift=2.0)])
def test_x0_loss_weight_equals_the_native_target_loss(schedule):
    """λ(t)‖x̂0 − x0‖² must equal the loss on each schedule's own network target."""
    g = torch.Generator().manual_seed(0)
    x0, eps, out = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    t = schedule.sampling_times(8)[1:7]
    x_t = schedule.add_noise(x0, eps, t)
    a, s = schedule.alpha_sigma(t[:, None])
    err_x0 = (schedule.to_x0(out, x_t, t) - x0).pow(2).sum(1)
    if isinstance(schedule, EDMSchedule):  # F-target: (x0 − c_skip x_t) / c_out
        c_skip, c_out, _ = schedule._c(t[:, None])
        native = (out - (x0 - c_skip * x_t) / c_out).pow(2).sum(1)
    elif isinstance(schedule, FlowMatchingSchedule):
        native = (out - (eps - x0)).pow(2).sum(1)
    elif schedule.prediction_type == "epsilon":
        native = (out - eps).pow(2).sum(1)
    else:
        native = (out - (a * eps - s * x0)).pow(2).sum(1)
    torch.testing.assert_close(schedule.x0_loss_weight(t) * err_x0, native, rtol=1e-4, atol=1e-4)
