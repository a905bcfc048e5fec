"""A Wan2.1 text-to-video teacher (a stock WanPipeline folder with its UniPC flow scheduler) and a prompt file
distil into a causal HiAR student that HiARPipeline runs from a prompt with its saved defaults."""

from pathlib import Path

import pytest
import torch

from fdistill.cli import main
from fdistill.models.tiny_pipelines import tiny_wan_pipeline
from fdistill.training.config import ConfigError, load_config
from fdistill.training.hiar_config import HiARConfig

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "wan_t2v_tiny.yaml"


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan")
    tiny_wan_pipeline().save_pretrained(root / "Wan2.1-T2V-tiny")
    (root / "prompts.txt").write_text("a cat\na red dog\n\n")
    return root


def test_wan_folder_distils_into_a_prompted_hiar_pipeline(wan, tmp_path):
    from fdistill.pipelines import HiARPipeline

    out = tmp_path / "run"
    assert main(["distill-video", "--config", str(CONFIG), f"teacher.path={wan / 'Wan2.1-T2V-tiny'}",
                 f"data.prompts_file={wan / 'prompts.txt'}", f"output_dir={out}",
                 f"trajectories.cache_dir={tmp_path / 'traj'}"]) == 0
    pipe = HiARPipeline.from_pretrained(out / "pipeline")
    assert type(pipe.transformer).__name__ == "CausalWanTransformer3DModel" and pipe.text_encoder is not None
    assert (pipe.config.num_frames, pipe.config.height, pipe.config.frames_per_block) == (13, 16, 2)
    video = pipe("a cat", generator=torch.Generator().manual_seed(0), output_type="pt").frames
    assert video.shape == (1, 13, 3, 16, 16) and torch.isfinite(video).all()
    # continuation through the Wan VAE: the clip's last 4k + 1 frames are encoded and continued
    cont = pipe("a cat", video=video[0][:7], generator=torch.Generator().manual_seed(0), output_type="pt").frames
    assert cont.shape == (1, 13, 3, 16, 16) and torch.isfinite(cont).all()
    z = pipe.encode_video(pipe._video_frames(video[0][:7]), 16, 16, torch.device("cpu"))
    assert z.shape == (1, pipe.transformer.config.in_channels, 2, 2, 2)  # frames 2..6: 1 + 4 -> 2 latent frames
    teacher_keys = set(HiARPipeline.from_pretrained(wan / "Wan2.1-T2V-tiny").transformer.state_dict())
    assert set(pipe.transformer.state_dict()) == teacher_keys  # the teacher's architecture, trained weights


def test_wan_teacher_needs_prompts_and_a_frame_size(wan):
    folder = f"teacher.path={wan / 'Wan2.1-T2V-tiny'}"
    with pytest.raises(ConfigError, match="needs prompts: data.prompts_file"):
        load_config(HiARConfig, CONFIG, [folder])
    with pytest.raises(ConfigError, match="needs the frame size: clip.height and clip.width"):
        load_config(HiARConfig, CONFIG, [folder, "data.prompts=[a cat]", "clip.height=null"])
    with pytest.raises(ConfigError, match="data.prompts condition a Wan text-to-video teacher"):
        load_config(HiARConfig, None, ["data.prompts=[a cat]"])
