import itertools

import pytest
import torch

from fdistill.kernels import BACKENDS, available_backends, block_causal_attention, block_causal_mask

CPU_BACKENDS = [b for b in available_backends("cpu") if b != "reference"]


def _frames(first: int, num: int, tokens_per_frame: int) -> torch.Tensor:
    return torch.arange(first, first + num).repeat_interleave(tokens_per_frame)


def _qkv(len_q: int, len_k: int, batch: int = 2, heads: int = 2, dim: int = 8, grad: bool = False):
    g = torch.Generator().manual_seed(len_q * 1000 + len_k)
    q = torch.randn(batch, heads, len_q, dim, generator=g)
    k = torch.randn(batch, heads, len_k, dim, generator=g)
    v = torch.randn(batch, heads, len_k, dim, generator=g)
    return [t.requires_grad_(grad) for t in (q, k, v)]


def test_mask_matches_the_rule_written_out():
    fpb, window = 2, 5
    q_frames, k_frames = torch.arange(4, 10), torch.arange(0, 10)
    mask = block_causal_mask(q_frames, k_frames, frames_per_block=fpb, window=window)
    for i, fq in enumerate(q_frames.tolist()):
        last = (fq // fpb + 1) * fpb - 1
        for j, fk in enumerate(k_frames.tolist()):
            assert bool(mask[i, j]) == (fk // fpb <= fq // fpb and fk >= last + 1 - window)
    assert mask[0].tolist() == [False] + [True] * 5 + [False] * 4  # frame 4 sees frames 1..5


CASES = [  # frames_per_block, window, cached frames, current frames
    (fpb, window, cached, current)
    for fpb, window, (cached, current) in itertools.product(
        (1, 2, 3), (None, "block", "block+2"), ((0, 6), (6, 6), (3, 3))
    )
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("fpb,window,cached,current", CASES)
def test_backend_matches_reference(backend, fpb, window, cached, current):
    window = {"block": fpb, "block+2": fpb + 2}.get(window, window)
    tokens = 3
    q_frames = _frames(cached, current, tokens)
    k_frames = _frames(0, cached + current, tokens)  # a cache prefix, then the current frames
    q, k, v = _qkv(len(q_frames), len(k_frames))
    kw = dict(q_frames=q_frames, k_frames=k_frames, frames_per_block=fpb, window=window)
    out = block_causal_attention(q, k, v, backend=backend, **kw)
    ref = block_causal_attention(q, k, v, backend="reference", **kw)
    assert out.shape == q.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_batched_frames_and_padding_keys(backend):
    tokens, fpb = 2, 2
    q_frames = torch.stack([_frames(4, 2, tokens), _frames(2, 2, tokens)])
    k_frames = torch.stack([_frames(0, 6, tokens), _frames(0, 6, tokens)])
    k_frames[1, : 2 * tokens] = -1  # sample 1: its first two cached frames are padding
    q, k, v = _qkv(q_frames.shape[1], k_frames.shape[1])
    kw = dict(q_frames=q_frames, k_frames=k_frames, frames_per_block=fpb)
    out = block_causal_attention(q, k, v, backend=backend, **kw)
    torch.testing.assert_close(out, block_causal_attention(q, k, v, backend="reference", **kw))
    # Sample 1 sees only frames 2..3 (its own block): the same as attending to those keys alone.
    sel = slice(2 * tokens, 4 * tokens)
    alone = torch.softmax(q[1] @ k[1, :, sel].transpose(-1, -2) / 8**0.5, -1) @ v[1, :, sel]
    torch.testing.assert_close(out[1], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [None, 3])
def test_sdpa_gradients_match_reference(window):
    q_frames, k_frames = _frames(3, 6, 2), _frames(0, 9, 2)
    kw = dict(q_frames=q_frames, k_frames=k_frames, frames_per_block=3, window=window)
    grads = []
    for backend in ("sdpa", "reference"):
        q, k, v = _qkv(len(q_frames), len(k_frames), grad=True)
        out = block_causal_attention(q, k, v, backend=backend, **kw)
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        grads.append([t.grad for t in (q, k, v)])
    for g_sdpa, g_ref in zip(*grads, strict=True):
        torch.testing.assert_close(g_sdpa, g_ref, atol=1e-5, rtol=1e-5)


def test_one_block_is_full_attention():
    q, k, v = _qkv(8, 8)
    frames = _frames(0, 4, 2)
    out = block_causal_attention(q, k, v, q_frames=frames, k_frames=frames, frames_per_block=4)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v))


def test_errors():
    q, k, v = _qkv(4, 4)
    frames = _frames(0, 2, 2)
    kw = dict(q_frames=frames, k_frames=frames)
    with pytest.raises(ValueError, match="window"):
        block_causal_attention(q, k, v, frames_per_block=2, window=1, **kw)
    with pytest.raises(ValueError, match="sdpa"):
        block_causal_attention(q, k, v, frames_per_block=2, backend="cudnn", **kw)
    if "triton" not in available_backends("cpu"):  # CPU tensors without the interpreter
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            block_causal_attention(q, k, v, frames_per_block=2, backend="triton", **kw)
    with pytest.raises(RuntimeError, match="CUDA"):
        block_causal_attention(q, k, v, frames_per_block=2, backend="xformers", **kw)
    with pytest.raises(ValueError, match="Lq"):
        block_causal_attention(q, k, v, q_frames=frames[:3], k_frames=frames, frames_per_block=2)
    assert set(available_backends("cpu")) <= set(BACKENDS)


@pytest.mark.skipif("flex" not in CPU_BACKENDS, reason="flex attention needs PyTorch >= 2.5")
def test_flex_block_mask_is_cached_per_layout():
    from fdistill.kernels import attention

    attention._BLOCK_MASKS.clear()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 24, 8, generator=g) for _ in range(3))
    frames = torch.arange(6).repeat_interleave(4)
    kw = dict(q_frames=frames, k_frames=frames, frames_per_block=2, backend="flex")
    first = block_causal_attention(q, k, v, **kw)
    again = block_causal_attention(q, k, v, q_frames=frames.clone(), k_frames=frames.clone(), frames_per_block=2,
                                   backend="flex")
    assert len(attention._BLOCK_MASKS) == 1 and torch.equal(first, again)
    windowed = block_causal_attention(q, k, v, **kw, window=2)  # another layout: another mask, other output
    assert len(attention._BLOCK_MASKS) == 2 and not torch.allclose(first, windowed)
    reference = block_causal_attention(q, k, v, q_frames=frames, k_frames=frames, frames_per_block=2, window=2,
                                       backend="reference")
    torch.testing.assert_close(windowed, reference, atol=1e-5, rtol=1e-5)


def test_auto_follows_the_measured_table():
    from fdistill.kernels import attention

    q = torch.zeros(1, 1, 2, 8)
    assert attention._resolve("auto", q) == "sdpa"  # the CPU keeps sdpa
    assert attention._cuda_auto_order("NVIDIA H100 80GB HBM3", torch.float32) == attention.MEASURED_SPEED_ORDER[
        ("H100", torch.float32)]
    assert attention._cuda_auto_order("NVIDIA A10", torch.float32) == ("xformers", "sdpa")  # not measured


def test_importing_the_kernels_does_not_import_triton():
    import subprocess
    import sys

    code = "import sys, fdistill.kernels; assert 'triton' not in sys.modules, 'triton imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_checkout_root_on_sys_path_does_not_hide_an_installed_kernels_package(tmp_path):
    # `python -m …` from the checkout puts its root on sys.path, where kernels/ (fdistill.kernels) would
    # shadow Hugging Face's `kernels`, which diffusers/transformers import when it is installed
    import os
    import subprocess
    import sys
    from pathlib import Path

    fake = tmp_path / "site" / "kernels"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("MARK = 'installed kernels'\n")
    root = Path(__file__).resolve().parent.parent
    code = ("import kernels, fdistill.kernels as ours\n"
            "print(kernels.MARK, ours.block_causal_attention.__module__)\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["installed", "kernels", "fdistill.kernels.attention"]
