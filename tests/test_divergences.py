import pytest
import torch

from fdistill.divergences import available_divergences, get_divergence

NAMES = ["reverse_kl", "softened_reverse_kl", "jensen_shannon", "squared_hellinger", "forward_kl",
         "jeffreys", "neyman_chi2", "alpha:0.5", "alpha:-0.5", "alpha:2", "alpha:0", "alpha:1"]
R = torch.logspace(-2, 2, 97, dtype=torch.float64)


def second_derivative(f, r):
    r = r.clone().requires_grad_(True)
    (d1,) = torch.autograd.grad(f(r).sum(), r, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), r)
    return d2


@pytest.mark.parametrize("name", NAMES)
def test_h_is_r_squared_f_second_derivative(name):
    div = get_divergence(name)
    torch.testing.assert_close(div.h(R), R**2 * second_derivative(div.f, R), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_f_vanishes_at_one_and_is_convex(name):
    div = get_divergence(name)
    assert abs(div.f(torch.ones(1, dtype=torch.float64)).item()) < 1e-12
    assert (second_derivative(div.f, R) > 0).all()
    mid = div.f((R[:-1] + R[1:]) / 2)
    assert (mid <= (div.f(R[:-1]) + div.f(R[1:])) / 2 + 1e-12).all()


def test_reverse_kl_weight_is_one():
    torch.testing.assert_close(get_divergence("rkl").h(R), torch.ones_like(R))


@pytest.mark.parametrize(("alpha", "name"), [(0, "reverse_kl"), (1, "forward_kl")])
def test_alpha_family_limits(alpha, name):
    a, ref = get_divergence(f"alpha:{alpha}"), get_divergence(name)
    torch.testing.assert_close(a.h(R), ref.h(R))
    # f differs only by c·(r − 1), which changes neither D_f nor h
    diff = a.f(R) - ref.f(R)
    slope = (diff[-1] - diff[0]) / (R[-1] - R[0])
    torch.testing.assert_close(diff, slope * (R - 1), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(("alias", "name"), [("rkl", "reverse_kl"), ("srkl", "softened_reverse_kl"),
                                             ("js", "jensen_shannon"), ("sh", "squared_hellinger"),
                                             ("fkl", "forward_kl"), ("kl", "forward_kl"),
                                             ("jf", "jeffreys"), ("JS", "jensen_shannon"), ("alpha:0.5", "alpha:0.5")])
def test_aliases(alias, name):
    assert get_divergence(alias).name == name


def test_unknown_divergence_lists_valid_names():
    with pytest.raises(ValueError, match="unknown divergence 'bogus'.*jensen_shannon.*alpha"):
        get_divergence("bogus")
    assert "forward_kl" in available_divergences()
