import pytest
import torch
from diffusers import UNet2DModel

from fdistill.denoisers import Denoiser
from fdistill.schedules import EDMSchedule


def tiny_unet():
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=3)


def test_guidance_convention():
    den = Denoiser(tiny_unet(), EDMSchedule(), null_condition=2)
    x, t, c = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 5.0]), torch.tensor([0, 1])
    cond, uncond = den(x, t, c), den(x, t, torch.tensor([2, 2]))
    torch.testing.assert_close(den(x, t, c, guidance_scale=1.0), cond)
    torch.testing.assert_close(den(x, t, c, guidance_scale=0.0), uncond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(den(x, t, c, guidance_scale=3.0), uncond + 3 * (cond - uncond), rtol=1e-5, atol=1e-5)


def test_feature_taps_by_hooks():
    den = Denoiser(tiny_unet(), EDMSchedule(), feature_modules=["mid_block", "down_blocks.1"])
    feats = den.features(torch.randn(2, 1, 8, 8), torch.tensor([1.0, 2.0]), torch.tensor([0, 1]))
    assert [f.shape for f in feats] == [torch.Size([2, 16, 4, 4]), torch.Size([2, 16, 4, 4])]
    with pytest.raises(ValueError, match="not found"):
        Denoiser(tiny_unet(), EDMSchedule(), feature_modules=["nope"])


def test_guidance_needs_null_condition():
    den = Denoiser(tiny_unet(), EDMSchedule())
    with pytest.raises(ValueError, match="null_condition"):
        den(torch.randn(1, 1, 8, 8), torch.tensor([1.0]), torch.tensor([0]), guidance_scale=2.0)
