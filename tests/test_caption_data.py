"""Caption datasets (image folders, webdataset shards), the latent cache, and runs on each of them."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from fdistill.cli import main
from fdistill.data.captions import image_tensor, read_image_folder, webdataset_samples
from fdistill.data.latent_cache import read_latent_cache
from fdistill.models.tiny_pipelines import tiny_pipeline

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
CAPTIONS = ["a red car", "a cat", "a small house", "a blue bird", "a green tree", "a black dog"]


def png(seed: int, size: int = 20) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An image folder with metadata.jsonl (diffusers' examples' layout)."""
    root = tmp_path_factory.mktemp("images")
    lines = []
    for i, caption in enumerate(CAPTIONS):
        (root / f"{i}.png").write_bytes(png(i))
        lines.append(json.dumps({"file_name": f"{i}.png", "text": caption}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two webdataset tar shards of three samples each."""
    root = tmp_path_factory.mktemp("shards")
    for s in range(2):
        with tarfile.open(root / f"shard-{s:06d}.tar", "w") as tar:
            for j in range(3):
                i = 3 * s + j
                for suffix, data in (("png", png(i)), ("txt", CAPTIONS[i].encode())):
                    info = tarfile.TarInfo(f"{i:04d}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(root / "shard-{000000..000001}.tar")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher") / "sd3"
    tiny_pipeline("sd3").save_pretrained(root)
    return root


def test_image_folder_reads_metadata_or_txt_captions(folder, tmp_path):
    pairs = read_image_folder(folder)
    assert [c for _, c in pairs] == CAPTIONS and all(p.is_file() for p, _ in pairs)
    sidecars = tmp_path / "txt"
    sidecars.mkdir()
    (sidecars / "a.png").write_bytes(png(0))
    (sidecars / "a.txt").write_text("a cat\n")
    assert read_image_folder(sidecars) == [(sidecars / "a.png", "a cat")]
    (sidecars / "b.png").write_bytes(png(1))
    with pytest.raises(ValueError, match="b.png has no caption"):
        read_image_folder(sidecars)
    with pytest.raises(ValueError, match="needs 'file_name' and the caption column 'caption'"):
        read_image_folder(folder, caption_column="caption")


def test_images_are_resized_and_centre_cropped_to_minus_one_one():
    x = image_tensor(Image.open(io.BytesIO(png(0, size=20))), 16)
    assert x.shape == (3, 16, 16) and -1 <= x.min() and x.max() <= 1
    assert image_tensor(Image.open(io.BytesIO(png(0))), 8, channels=1).shape == (1, 8, 8)


def test_webdataset_shards_split_over_ranks_in_order_and_resume(shards):
    def take(n, **kw):
        stream = webdataset_samples(shards, 8, **kw)
        return [next(stream)[1] for _ in range(n)]

    assert take(3, rank=0, world=2) == CAPTIONS[:3] and take(3, rank=1, world=2) == CAPTIONS[3:]
    assert take(8) == [*CAPTIONS, *CAPTIONS[:2]]  # one rank reads every shard, then starts again
    assert take(2, skip=3) == take(5)[3:]  # a resumed reader continues where it was
    with pytest.raises(ValueError, match="2 shard\\(s\\) for 3 ranks"):
        take(1, rank=0, world=3)


COMMON = ["teacher.kind=pipeline", "warmup.steps=1", "warmup.ode_pairs=4", "warmup.ode_steps=2", "warmup.batch_size=2",
          "steps=1", "batch_size=2", "critic_steps=1", "checkpoint_every=10", "progress=false"]


def test_image_folder_run_trains_on_its_images_and_captions(folder, teacher, tmp_path):
    out = tmp_path / "run"
    assert main(["distill", *COMMON, f"teacher.path={teacher}", "data.name=imagefolder", f"data.path={folder}",
                 f"output_dir={out}"]) == 0
    assert (out / "pipeline" / "model_index.json").is_file()


def test_cache_run_loads_no_vae_and_no_text_encoder(folder, teacher, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    assert main(["cache", "--teacher", str(teacher), "--data", str(folder), "--output", str(cache),
                 "--shard-size", "4", "--batch-size", "3"]) == 0
    data = read_latent_cache(cache)
    assert data.meta["shards"] == 2 and data.latents.shape == (6, 16, 8, 8) and data.captions == CAPTIONS
    # the cached conditions are the teacher's own encoding of the captions
    from fdistill.families import load_family

    family = load_family(teacher)
    torch.testing.assert_close(data.conditions, family.conditions(CAPTIONS))
    loaded = []
    import diffusers

    original = diffusers.DiffusionPipeline.from_pretrained.__func__

    def spy(cls, path, **kwargs):
        loaded.append(sorted(k for k, v in kwargs.items() if v is None))
        return original(cls, path, **kwargs)

    monkeypatch.setattr(diffusers.StableDiffusion3Pipeline, "from_pretrained", classmethod(spy))
    out = tmp_path / "run"
    assert main(["distill", *COMMON, f"teacher.path={teacher}", "data.name=cache", f"data.path={cache}",
                 f"output_dir={out}"]) == 0
    assert {"text_encoder", "text_encoder_2", "text_encoder_3", "vae"} <= set(loaded[0])  # the training run
    export = diffusers.DiffusionPipeline.from_pretrained(out / "pipeline")  # the export has them all
    assert export.vae is not None and export.text_encoder_3 is not None


def test_webdataset_run_checkpoints_its_position(shards, teacher, tmp_path):
    out = tmp_path / "run"
    assert main(["distill", *COMMON, f"teacher.path={teacher}", "data.name=webdataset", f"data.path={shards}",
                 "data.prompts=[a cat]", "checkpoint_every=1", f"output_dir={out}"]) == 0
    last = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert json.loads((last / "real_stream.json").read_text())["consumed"] == 2  # 1 critic update × 2 rows


def test_bad_data_settings_stop_at_the_door(folder, teacher, tmp_path, capsys):
    base = ["distill", "teacher.kind=pipeline", f"teacher.path={teacher}", f"output_dir={tmp_path / 'x'}"]
    assert main([*base, "data.name=imagefolder"]) == 2
    assert "data.path is read by data.name in" in capsys.readouterr().err
    assert main([*base, "data.name=cache", f"data.path={folder}", "data.prompts=[a cat]"]) == 2
    assert "trains on the cache's captions" in capsys.readouterr().err
    assert main([*base, "data.name=teacher_samples", f"data.prompts_file={tmp_path / 'none.txt'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
