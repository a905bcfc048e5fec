"""The Triton block-causal kernels (forward and backward) against the float32 reference, on the CPU
under the Triton interpreter.

The interpreter has to be on before ``triton`` itself is imported: ``import triton`` decorates
triton.language's own jit functions (``tl.sum``, ``tl.max``, …) in whichever mode ``TRITON_INTERPRET``
says at that moment, and in a test session something imports triton early (importing diffusers
does). Setting the variable in conftest.py would put every test module in interpreter mode. So the
kernels run in one subprocess started with ``TRITON_INTERPRET=1`` (this file run as a script, once
per session); the tests below compare its outputs and gradients with the reference computed here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fdistill.kernels import block_causal_attention

pytest.importorskip("triton")


def _frames(first: int, num: int, tokens_per_frame: int) -> torch.Tensor:
    return torch.arange(first, first + num).repeat_interleave(tokens_per_frame)


def _training(tokens):  # no cache: every frame queries every frame, 3 blocks of 2 frames
    frames = _frames(0, 6, tokens)
    return frames, frames, 2, None


def _cached_window(tokens):  # a KV cache of frames 0..5 followed by the current block 6..8, window 6
    return _frames(6, 3, tokens), _frames(0, 9, tokens), 3, 6


def _padded_per_sample(tokens):  # per-sample frames; sample 1's first cached frames are padding
    q_frames = torch.stack([_frames(4, 2, tokens), _frames(2, 2, tokens)])
    k_frames = torch.stack([_frames(0, 6, tokens), _frames(0, 6, tokens)])
    k_frames[1, : 2 * tokens] = -1
    return q_frames, k_frames, 2, None


def _unsorted(tokens):  # the current block first, then a shuffled cache, window 4
    shuffle = torch.randperm(4 * tokens, generator=torch.Generator().manual_seed(5))
    return _frames(4, 2, tokens), torch.cat([_frames(4, 2, tokens), _frames(0, 4, tokens)[shuffle]]), 2, 4


CASES = {  # name: layout, tokens per frame, head dim, dtype
    "training-5tok-d16-fp32": (_training, 5, 16, torch.float32),
    "cache+window-3tok-d40-fp32": (_cached_window, 3, 40, torch.float32),
    "padding+per-sample-7tok-d64-fp32": (_padded_per_sample, 7, 64, torch.float32),
    "unsorted-keys-3tok-d128-fp32": (_unsorted, 3, 128, torch.float32),
    "cache+window-5tok-d64-fp16": (_cached_window, 5, 64, torch.float16),
}
TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=3e-3, rtol=3e-3)}


def _inputs(name: str):
    layout, tokens, dim, dtype = CASES[name]
    q_frames, k_frames, fpb, window = layout(tokens)
    g = torch.Generator().manual_seed(0)
    lengths = (q_frames.shape[-1], k_frames.shape[-1], k_frames.shape[-1])
    q, k, v = (torch.randn(2, 2, n, dim, generator=g).to(dtype).requires_grad_() for n in lengths)
    kw = dict(q_frames=q_frames, k_frames=k_frames, frames_per_block=fpb, window=window)
    return q, k, v, kw, torch.linspace(-1, 1, dim, dtype=dtype)  # a loss weight that differs per dim


def _tiny_model_outputs(backend: str) -> torch.Tensor:
    """A tiny causal Wan: one block against a KV cache of two earlier blocks, with a window."""
    from hiar_common import TINY

    from fdistill.models import CausalWanTransformer3DModel

    torch.manual_seed(0)
    model = CausalWanTransformer3DModel(**TINY).eval()
    g = torch.Generator().manual_seed(1)
    latents, text = torch.randn(1, 2, 6, 4, 4, generator=g), torch.randn(1, 3, 32, generator=g)
    causal = dict(attention="block_causal", frames_per_block=2, window=4, attention_backend=backend)
    cache = model.make_kv_cache(window=2)
    with torch.no_grad():
        for start in (0, 2):
            model(latents[:, :, start : start + 2], torch.full((1,), 500.0), text, frame_offset=start, kv_cache=cache,
                  update_cache=True, **causal)
        return model(latents[:, :, 4:], torch.full((1,), 700.0), text, frame_offset=4, kv_cache=cache, **causal).sample


def _run_interpreted(path: str) -> None:
    """Subprocess body: every Triton computation the tests check, saved to ``path``."""
    from fdistill.kernels import triton_attention

    assert triton_attention.INTERPRETED, "TRITON_INTERPRET=1 was not set before triton was imported"
    results: dict = {}
    for name in CASES:
        q, k, v, kw, weight = _inputs(name)
        out = block_causal_attention(q, k, v, backend="triton", **kw)
        results[name] = (out.detach(), *torch.autograd.grad((out * weight).sum(), (q, k, v)))
    q, k, v = (torch.randn(1, 2, 4, 16) for _ in range(3))  # no query sees a key
    results["sees_nothing"] = block_causal_attention(q, k, v, q_frames=_frames(0, 2, 2), frames_per_block=2,
                                                     k_frames=torch.tensor([-1, -1, 2, 2]), backend="triton")
    try:
        block_causal_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), q_frames=_frames(0, 2, 2),
                               k_frames=_frames(0, 2, 2), frames_per_block=2, backend="triton")
    except ValueError as e:
        results["bf16_error"] = str(e)
    results["model"] = _tiny_model_outputs("triton")
    torch.save(results, path)


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    path = tmp_path_factory.mktemp("triton") / "results.pt"
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [tests_dir, env.get("PYTHONPATH")]))
    run = subprocess.run([sys.executable, os.path.abspath(__file__), str(path)], env=env, capture_output=True,
                         text=True)
    if run.returncode:
        pytest.fail(f"the interpreted Triton run failed:\n{run.stderr[-4000:]}")
    return torch.load(path)


@pytest.mark.parametrize("name", list(CASES))
def test_forward_and_gradients_match_reference(interpreted, name):
    q, k, v, kw, weight = _inputs(name)
    dtype = q.dtype
    ref = block_causal_attention(q, k, v, backend="reference", **kw)
    expected = (ref.detach(), *torch.autograd.grad((ref * weight).sum(), (q, k, v)))
    got = interpreted[name]
    assert got[0].dtype == dtype and got[0].shape == q.shape
    for what, a, b in zip(("out", "dq", "dk", "dv"), got, expected, strict=True):
        torch.testing.assert_close(a, b, **TOLERANCE[dtype], msg=lambda m, w=what: f"{name} {w}: {m}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled kernels need a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(CASES))
def test_compiled_kernels_on_cuda(name, dtype):
    q, k, v, kw, weight = _inputs(name)
    q, k, v = (t.detach().to("cuda", dtype).requires_grad_() for t in (q, k, v))
    weight = weight.to("cuda", dtype)
    results = []
    for backend in ("triton", "reference"):
        out = block_causal_attention(q, k, v, backend=backend, **kw)
        results.append((out, *torch.autograd.grad((out * weight).sum(), (q, k, v))))
    tolerance = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 3e-2}[dtype]
    for what, a, b in zip(("out", "dq", "dk", "dv"), *results, strict=True):
        torch.testing.assert_close(a, b, atol=tolerance, rtol=tolerance, msg=lambda m, w=what: f"{name} {w}: {m}")


def test_query_seeing_nothing_gives_zeros(interpreted):
    assert torch.equal(interpreted["sees_nothing"], torch.zeros(1, 2, 4, 16))


def test_bfloat16_refused_in_the_interpreter(interpreted):
    assert "bfloat16" in interpreted["bf16_error"]


def test_causal_wan_with_the_triton_backend(interpreted):
    torch.testing.assert_close(interpreted["model"], _tiny_model_outputs("sdpa"), atol=1e-5, rtol=1e-5)


def test_masked_tiles_are_skipped():
    """16-token tiles, 8 tokens per frame, frames_per_block=2: query tile i sees key tiles 0..i."""
    from fdistill.kernels import triton_attention as ta

    frames = _frames(0, 8, 8)[None]
    lo, hi = ta._query_intervals(frames, 2, None)
    count, index = ta._tile_lists(ta._tile_ranges(lo, hi, frames.int(), 16, 16))
    assert count.tolist() == [[1, 2, 3, 4]] and index[0, 3].tolist() == [0, 1, 2, 3]
    lo, hi = ta._query_intervals(frames, 2, 4)  # a window of 4 frames drops the older tiles
    count, index = ta._tile_lists(ta._tile_ranges(lo, hi, frames.int(), 16, 16))
    assert count.tolist() == [[1, 2, 2, 2]] and index[0, 3, :2].tolist() == [2, 3]
    # a tile of padding keys is never visited
    padded = torch.cat([frames, torch.full((1, 16), -1)], dim=1)
    count, _ = ta._tile_lists(ta._tile_ranges(lo, hi, padded.int(), 16, 16))
    assert count.tolist() == [[1, 2, 2, 2]]


def test_head_dim_out_of_range():
    from fdistill.kernels import triton_attention as ta

    q = torch.zeros(1, 1, 4, 8)
    with pytest.raises(ValueError, match="16..128"):
        ta.triton_block_causal_attention(q, q, q, _frames(0, 2, 2), _frames(0, 2, 2), 2, None)


if __name__ == "__main__":
    _run_interpreted(sys.argv[1])
