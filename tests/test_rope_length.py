"""Frame positions beyond diffusers' RoPE table (``rope_max_seq_len``): videos of any length."""

import numpy as np
import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from tolerances import assert_close_up_to_rounding

from fdistill.models import CausalWanTransformer3DModel
from fdistill.models.hiar_cell import HiARPlan, NoiseBank, generate_video
from fdistill.schedules import FlowMatchingSchedule

TABLE = 8  # rope_max_seq_len of the tiny model: every video below runs past it
SMALL_TABLE = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=24, in_channels=2,
                   out_channels=2, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, rope_max_seq_len=TABLE)
ROWS, COLS = 2, 3  # post-patch grid of 4 x 6 latents
CAUSAL = dict(attention="block_causal", frames_per_block=2, window=4)


@pytest.fixture(scope="module")
def small_table_model():
    """The tiny Wan with a RoPE table shorter than the videos here (conftest's ``model`` has a long one)."""
    torch.manual_seed(0)
    return CausalWanTransformer3DModel(**SMALL_TABLE).eval()


@pytest.fixture(scope="module")
def text():
    return torch.randn(1, 3, 32, generator=torch.Generator().manual_seed(1))


def _latents(frames: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(1, 2, frames, 2 * ROWS, 2 * COLS, generator=torch.Generator().manual_seed(seed))


def test_inside_the_table_the_angles_are_diffusers_table(small_table_model):
    expected = WanRotaryPosEmbed(SMALL_TABLE["attention_head_dim"], SMALL_TABLE["patch_size"], TABLE)(
        torch.zeros(1, 2, TABLE, 2 * ROWS, 2 * COLS))
    for got, want in zip(small_table_model._rotary_emb(TABLE, ROWS, COLS, frame_offset=0), expected, strict=True):
        assert_close_up_to_rounding(got, want, atol=1e-7)


@pytest.mark.parametrize("offset", [TABLE - 2, 1000, 10**6])
def test_positions_beyond_the_table_continue_the_angles(small_table_model, offset):
    """cos/sin of position × θ^(−2i/d) (a float64 oracle), also far past the table where float32 angles drift."""
    frames, t_dim = 4, small_table_model.rope.t_dim
    cos, sin = (table.reshape(frames, ROWS * COLS, -1) for table in small_table_model._rotary_emb(frames, ROWS, COLS, offset))
    inverse = 10000.0 ** (-np.arange(0, t_dim, 2) / t_dim)
    angles = np.repeat(np.outer(np.arange(offset, offset + frames), inverse), 2, axis=1)  # (frames, t_dim) interleaved
    for got, want in ((cos, np.cos(angles)), (sin, np.sin(angles))):
        np.testing.assert_allclose(got[:, :, :t_dim].double().numpy(), want[:, None].repeat(ROWS * COLS, 1), atol=1e-7)
    # the spatial axes are the table's, whatever the frame
    cos_0, _ = small_table_model._rotary_emb(frames, ROWS, COLS, 0)
    assert torch.equal(cos[:, :, t_dim:], cos_0.reshape(frames, ROWS * COLS, -1)[:, :, t_dim:])


@torch.no_grad()
def test_windowed_video_of_three_times_the_table_is_finite_with_bounded_cache(small_table_model, text):
    frames, fpb, window = 3 * TABLE, 2, 4
    plan = HiARPlan((1.0, 0.5, 0.0), frames // fpb, fpb, window=window)
    video, cells = generate_video(small_table_model, FlowMatchingSchedule(shift=3.0), plan, text,
                                  NoiseBank(0, (1, 2, fpb, 2 * ROWS, 2 * COLS)), "hierarchical")
    assert video.shape == (1, 2, frames, 2 * ROWS, 2 * COLS) and torch.isfinite(video).all()
    assert max(c.num_frames for c in cells._caches.values()) <= window - fpb
    assert int(max(c.frames.max() for c in cells._caches.values())) >= 2 * TABLE  # keys written past the table


@pytest.mark.parametrize("shift", [TABLE, 1000, 10**6])
@torch.no_grad()
def test_shifting_every_frame_offset_leaves_windowed_attention_unchanged(small_table_model, text, shift):
    """RoPE is relative: block-by-block generation with a KV cache (keys stored after RoPE, at their
    write positions) gives the same outputs at frames shift.. as at frames 0.. (shift: whole blocks)."""
    latents, t = _latents(12), torch.linspace(900, 100, 12)[None]

    def by_blocks(start: int) -> torch.Tensor:
        cache, outs = small_table_model.make_kv_cache(window=CAUSAL["window"]), []
        for b in range(0, 12, 2):
            outs.append(small_table_model(latents[:, :, b : b + 2], t[:, b : b + 2], text, frame_offset=start + b, kv_cache=cache,
                              update_cache=True, **CAUSAL).sample)
        assert int(cache.frames.min()) == start + 12 - CAUSAL["window"]
        return torch.cat(outs, dim=2)

    base = by_blocks(0)
    assert_close_up_to_rounding(by_blocks(shift), base)
    # and the same frames in one forward (no cache) past the table: the cached keys kept their rotation
    assert_close_up_to_rounding(small_table_model(latents, t, text, frame_offset=shift, **CAUSAL).sample, base)
