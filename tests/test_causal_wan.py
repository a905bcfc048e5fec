import pytest
import torch
from diffusers import WanTransformer3DModel
from hiar_common import TINY

from fdistill.models import CausalWanTransformer3DModel, KVCache

WAN21_T2V_1_3B = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=8960,
    num_layers=30,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)
FRAMES = 6


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, TINY["in_channels"], FRAMES, 4, 6, generator=g)
    timesteps = torch.rand(2, FRAMES, generator=g) * 1000  # per frame
    text = torch.randn(2, 5, 32, generator=g)
    return latents, timesteps, text


def _close(a, b, atol=1e-5):
    torch.testing.assert_close(a, b, atol=atol, rtol=atol)


@pytest.mark.parametrize("fpb,window", [(1, None), (2, None), (3, None), (1, 2), (2, 2), (2, 4), (3, 3), (3, 5)])
@torch.no_grad()
def test_full_sequence_mask_equals_block_by_block_generation_with_cache(model, inputs, fpb, window):
    latents, timesteps, text = inputs
    causal = dict(attention="block_causal", frames_per_block=fpb, window=window)
    full = model(latents, timesteps, text, **causal).sample

    cache = model.make_kv_cache(window=window)
    for start in range(0, FRAMES, fpb):
        block = slice(start, start + fpb)
        out = model(
            latents[:, :, block],
            timesteps[:, block],
            text,
            frame_offset=start,
            kv_cache=cache,
            update_cache=True,
            **causal,
        ).sample
        _close(out, full[:, :, block])
        if window is not None:
            assert cache.num_frames <= window


@torch.no_grad()
def test_cache_written_at_another_timestep_and_fused_write(model, inputs):
    """HiAR: block b is written from its re-noised copy (t_write), block b + 1 reads it (t_read)."""
    latents, _, text = inputs
    fpb, t_write, t_read = 2, 250.0, 750.0
    causal = dict(attention="block_causal", frames_per_block=fpb)
    t = lambda value, n=fpb: torch.full((2, n), value)

    separate = model.make_kv_cache()
    model(latents[:, :, :2], t(t_write), text, kv_cache=separate, update_cache=True, **causal)
    out_next = model(latents[:, :, 2:4], t(t_read), text, frame_offset=2, kv_cache=separate, **causal).sample

    # One forward: block 0 at t_write (stored) followed by block 1 at t_read (denoised, not stored).
    fused = model.make_kv_cache()
    both = model(
        latents[:, :, :4],
        torch.cat([t(t_write), t(t_read)], dim=1),
        text,
        kv_cache=fused,
        update_cache=True,
        cache_write_frames=fpb,
        **causal,
    ).sample
    _close(both[:, :, 2:4], out_next)
    assert fused.frames.tolist() == separate.frames.tolist()
    for k_fused, k_separate in zip(fused.keys, separate.keys, strict=True):
        _close(k_fused, k_separate)

    # Reading at t_read is not the same as having written at t_read: the cache carries t_write.
    other = model.make_kv_cache()
    model(latents[:, :, :2], t(t_read), text, kv_cache=other, update_cache=True, **causal)
    assert not torch.allclose(
        model(latents[:, :, 2:4], t(t_read), text, frame_offset=2, kv_cache=other, **causal).sample, out_next
    )
    # A read leaves the cache untouched; rewriting frames replaces them.
    assert len(separate) == 2 * 2 * 3
    model(latents[:, :, :2], t(t_read), text, kv_cache=separate, update_cache=True, **causal)
    assert len(separate) == 2 * 2 * 3
    _close(separate.keys[1], other.keys[1])


@pytest.mark.parametrize("attention", ["bidirectional", "block_causal"])
@torch.no_grad()
def test_cached_copies_of_input_frames_are_ignored(model, inputs, attention):
    """A cache holding frames 0..3 reads like one holding 0..1 when the input is frames 2..5."""
    latents, timesteps, text = inputs
    kw = dict(attention=attention, frames_per_block=2 if attention == "block_causal" else None)
    stale, clean = model.make_kv_cache(), model.make_kv_cache()
    model(latents[:, :, :4], timesteps[:, :4], text, kv_cache=stale, update_cache=True, **kw)
    model(latents[:, :, :4], timesteps[:, :4], text, kv_cache=clean, update_cache=True, cache_write_frames=2, **kw)
    assert stale.num_frames == 4 and clean.num_frames == 2
    read = lambda cache: model(latents[:, :, 2:], timesteps[:, 2:], text, frame_offset=2, kv_cache=cache, **kw).sample
    _close(read(stale), read(clean))


@pytest.mark.parametrize("attention", ["bidirectional", "block_causal"])
@torch.no_grad()
def test_equal_per_frame_timesteps_equal_the_batch_timestep(model, inputs, attention):
    latents, _, text = inputs
    t = torch.tensor([100.0, 900.0])
    kw = dict(attention=attention, frames_per_block=2 if attention == "block_causal" else None, frame_offset=3)
    per_batch = model(latents, t, text, **kw).sample
    per_frame = model(latents, t[:, None].expand(-1, FRAMES), text, **kw).sample
    _close(per_frame, per_batch)
    # and the per-frame values do matter
    varied = t[:, None] + torch.arange(FRAMES) * 50.0
    assert not torch.allclose(model(latents, varied, text, **kw).sample, per_batch)


@torch.no_grad()
def test_bidirectional_and_single_block_equal_the_parent(model, inputs):
    latents, _, text = inputs
    parent = WanTransformer3DModel(**TINY).eval()
    parent.load_state_dict(model.state_dict())
    t = torch.tensor([100.0, 900.0])
    expected = parent(latents, t, text).sample
    assert expected.shape == latents.shape and expected.abs().mean() > 0.1
    _close(model(latents, t, text).sample, expected)
    _close(model(latents, t[:, None].expand(-1, FRAMES), text).sample, expected)  # own loop
    _close(model(latents, t, text, attention="block_causal", frames_per_block=FRAMES).sample, expected)


@torch.no_grad()
def test_frame_offset_sets_rope_positions(model, inputs):
    latents, timesteps, text = inputs
    causal = dict(attention="block_causal", frames_per_block=2)
    # RoPE is relative: without a cache, a shift by whole blocks changes nothing ...
    base = model(latents, timesteps, text, **causal).sample
    _close(model(latents, timesteps, text, frame_offset=4, **causal).sample, base, atol=1e-4)
    # ... but after cached frames the offset sets the distance to them (the mask is the same here).
    cache = model.make_kv_cache()
    model(latents[:, :, :2], timesteps[:, :2], text, kv_cache=cache, update_cache=True, **causal)
    near = model(latents[:, :, 2:4], timesteps[:, 2:4], text, frame_offset=2, kv_cache=cache, **causal).sample
    far = model(latents[:, :, 2:4], timesteps[:, 2:4], text, frame_offset=4, kv_cache=cache, **causal).sample
    assert not torch.allclose(near, far, atol=1e-4)
    cos, sin = model._rotary_emb(2, 2, 3, frame_offset=4)
    cos_full, sin_full = model._rotary_emb(6, 2, 3, frame_offset=0)
    _close(cos, cos_full[:, 4 * 6 :])
    _close(sin, sin_full[:, 4 * 6 :])
    with pytest.raises(ValueError, match="frame_offset"):  # negative frame indices mark padding keys
        model._rotary_emb(2, 2, 3, frame_offset=-1)


def test_window_keeps_cache_memory_flat(model):
    g = torch.Generator().manual_seed(2)
    text = torch.randn(1, 5, 32, generator=g)
    fpb, window = 2, 4
    cache = model.make_kv_cache(window=window)
    sizes = []
    with torch.no_grad():
        for start in range(0, 24, fpb):
            block = torch.randn(1, TINY["in_channels"], fpb, 4, 4, generator=g)
            model(
                block,
                torch.full((1,), 500.0),
                text,
                frame_offset=start,
                kv_cache=cache,
                update_cache=True,
                attention="block_causal",
                frames_per_block=fpb,
                window=window,
            )
            sizes.append(cache.nbytes())
            assert cache.num_frames == min(start + fpb, window)
            assert cache.frames.min() == max(0, start + fpb - window)
    assert sizes[1:] == [sizes[1]] * (len(sizes) - 1)
    per_frame = sizes[0] // fpb
    assert sizes[-1] == window * per_frame


def test_gradient_checkpointing_matches_plain_backward(inputs):
    latents, timesteps, text = inputs
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        net = CausalWanTransformer3DModel(**TINY)
        if checkpointing:
            net.enable_gradient_checkpointing()
        cache = net.make_kv_cache()
        with torch.no_grad():
            net(
                latents[:, :, :2],
                timesteps[:, :2],
                text,
                kv_cache=cache,
                update_cache=True,
                attention="block_causal",
                frames_per_block=2,
            )
        out = net(
            latents[:, :, 2:4],
            timesteps[:, 2:4],
            text,
            frame_offset=2,
            kv_cache=cache,
            update_cache=True,
            attention="block_causal",
            frames_per_block=2,
        ).sample
        out.square().mean().backward()
        assert len(cache) == 2 * 4 * 3  # the backward recomputation did not write again
        grads.append(net.blocks[0].attn1.to_q.weight.grad)
    _close(grads[1], grads[0])


def test_errors(model, inputs):
    latents, timesteps, text = inputs
    with pytest.raises(ValueError, match="frames_per_block"):
        model(latents, timesteps, text, attention="block_causal")
    with pytest.raises(ValueError, match="window"):
        model(latents, timesteps, text, window=4)
    with pytest.raises(ValueError, match="kv_cache"):
        model(latents, timesteps, text, update_cache=True)
    with pytest.raises(ValueError, match="timestep"):
        model(latents, timesteps[:, :4], text, attention="block_causal", frames_per_block=2)
    with pytest.raises(ValueError, match="window"):
        model(latents, timesteps, text, attention="block_causal", frames_per_block=3, window=2)
    with pytest.raises(ValueError, match="attention"):
        model(latents, timesteps, text, attention="causal")
    with pytest.raises(ValueError, match="window"):
        KVCache(2, window=0)


@torch.no_grad()
def test_save_and_load_round_trip(model, inputs, tmp_path):
    latents, timesteps, text = inputs
    model.save_pretrained(tmp_path)
    loaded = CausalWanTransformer3DModel.from_pretrained(tmp_path).eval()
    assert loaded.config.num_layers == TINY["num_layers"] and loaded.config.text_dim == TINY["text_dim"]
    causal = dict(attention="block_causal", frames_per_block=2, window=4)
    _close(loaded(latents, timesteps, text, **causal).sample, model(latents, timesteps, text, **causal).sample)


def test_wan21_t2v_1_3b_config_on_meta_device():
    with torch.device("meta"):
        big = CausalWanTransformer3DModel(**WAN21_T2V_1_3B)
    params = sum(p.numel() for p in big.parameters())
    assert 1.2e9 <= params <= 1.5e9
    assert big.config.num_layers == 30 and len(big.make_kv_cache().keys) == 30
