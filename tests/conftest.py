import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # tiny models: one thread is faster than two fighting over 2 cores

TINY_UNET = {
    "sample_size": 16, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16], "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 4, "num_class_embeds": 11,
}


@pytest.fixture(scope="session")
def tiny_digits_teacher(tmp_path_factory):
    """A 2-step-trained tiny EDM digits teacher folder (the same layout `fdistill train-teacher` writes)."""
    from fdistill.training.config import build
    from fdistill.training.teacher import TeacherConfig, train_teacher

    out = tmp_path_factory.mktemp("teacher")
    cfg = build(TeacherConfig, {
        "model": {"kind": "unet2d", "config": TINY_UNET},
        "schedule": {"name": "edm", "kwargs": {}},
        "data": {"name": "digits", "kwargs": {"split": "train"}},
        "num_classes": 10, "batch_size": 8, "steps": 2, "checkpoint_every": 100, "log_every": 1,
        "output_dir": str(out),
    })
    return train_teacher(cfg)


@pytest.fixture(scope="module")
def model():
    """A tiny random CausalWanTransformer3DModel (HiAR tests)."""
    from hiar_common import TINY

    from fdistill.models.causal_wan import CausalWanTransformer3DModel

    torch.manual_seed(0)
    return CausalWanTransformer3DModel(**TINY).eval()


@pytest.fixture(scope="module")
def text():
    """Text features (2, 3, 32) for the tiny Wan model."""
    return torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(1))
