"""Pipelined-parallel HiAR on CPU (gloo): 2 and 4 processes give the single-process hierarchical video."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from hiar_common import SCHEDULE, TINY

from fdistill.models import CausalWanTransformer3DModel
from fdistill.models.hiar_cell import HiARPlan, NoiseBank, denoising_times, generate_video
from fdistill.pipelines.hiar_parallel import generate_video_pipelined, ideal_speedup, steps_of_rank
from fdistill.pipelines.hiar_pipeline import HiARPipeline, LabelEmbeddingModel

N, F = 5, 2
BLOCK = (2, 2, F, 4, 4)


@pytest.mark.parametrize("processes,context,window", [(2, "next", 4), (4, "next", None), (4, "same", 4)])
def test_pipelined_equals_hierarchical(model, text, processes, context, window):
    plan = HiARPlan(denoising_times(SCHEDULE, [1000, 750, 500, 250]), N, F, window=window, context=context,
                    attention_backend="sdpa")
    bank = NoiseBank(11, BLOCK)
    reference, cells = generate_video(model, SCHEDULE, plan, text, bank, "hierarchical")
    timing = {}
    video = generate_video_pipelined(model, SCHEDULE, plan, text, bank, processes, timing=timing)
    assert (video - reference).abs().max() <= 1e-5
    assert sum(timing["forwards"]) == cells.num_forwards  # the same forwards, spread over the ranks
    assert len(timing["forwards"]) == processes


def test_pipeline_order_pipelined(model):
    torch.manual_seed(0)
    transformer = CausalWanTransformer3DModel(**{**TINY, "in_channels": 1, "out_channels": 1}).eval()
    pipe = HiARPipeline(transformer, FlowMatchEulerDiscreteScheduler(shift=2.0),
                        label_embedding=LabelEmbeddingModel(10, 32, 1), frames_per_block=2, height=8, width=8)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(labels=[2, 9], num_frames=6, output_type="latent", denoising_steps=[1000, 500, 250])
    expected = pipe(generator=torch.Generator().manual_seed(4), **kwargs).frames
    got = pipe(generator=torch.Generator().manual_seed(4), order="pipelined", num_processes=2, **kwargs).frames
    assert (got - expected).abs().max() <= 1e-5


def test_steps_of_rank_and_ideal_speedup():
    assert [list(steps_of_rank(r, 4, 4)) for r in range(4)] == [[0], [1], [2], [3]]
    assert [list(steps_of_rank(r, 2, 4)) for r in range(2)] == [[0, 1], [2, 3]]
    assert sorted(sum((list(steps_of_rank(r, 3, 7)) for r in range(3)), [])) == list(range(7))
    assert ideal_speedup(27, 4) == pytest.approx(3.6)
    with pytest.raises(ValueError, match="processes"):
        steps_of_rank(0, 5, 4)
