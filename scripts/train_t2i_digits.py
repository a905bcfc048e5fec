"""Train the text-to-image digits teacher in the SD3 layout and pack it as fdistill/assets/t2i_digits_teacher.

    python scripts/train_t2i_digits.py [--vae-steps 1000] [key=value ...]   # overrides of the teacher config

1. Builds the folder to train (``<init>/pipeline``, a ``StableDiffusion3Pipeline``): an ``AutoencoderKL``
   trained here on the digits (16×16 grey → 8×8×4 latents; scaling and shift factors set from the latents'
   statistics, as SD3's VAE has them), two tiny ``CLIPTextModelWithProjection`` text encoders with CLIP
   tokenizers over a small vocabulary (random, frozen), an ``SD3Transformer2DModel`` (MMDiT, random) and a
   ``FlowMatchEulerDiscreteScheduler`` (shift 1), plus a tiny T5 encoder with a T5 tokenizer (random,
   frozen). The stock call pads T5 to 256 tokens, so the MMDiT sees 2×10 CLIP + 256 T5 text tokens and
   8×8 image tokens, and is trained on exactly that.
2. Trains the MMDiT with ``fdistill train-teacher --config configs/t2i_digits_teacher.yaml`` (resumable).
3. Copies the trained folder to ``fdistill/assets/t2i_digits_teacher``.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("a handwritten the digit drawing of number zero one two three four five six seven eight nine").split()


def train_vae(steps: int, seed: int = 0, batch: int = 128):
    """An AutoencoderKL on all digits: L2 reconstruction + a small KL term; returns (vae, recon MSE)."""
    from diffusers import AutoencoderKL

    from fdistill.data.digits import load_digits_tensors

    x, _ = load_digits_tensors("all")
    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
                        latent_channels=4, norm_num_groups=16, sample_size=16, use_quant_conv=False,
                        use_post_quant_conv=False)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    tic = time.time()
    for step in range(steps):
        batch_x = x[torch.randint(len(x), (batch,), generator=g)]
        posterior = vae.encode(batch_x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        rec = vae.decode(z).sample
        loss = (rec - batch_x).pow(2).mean() + 1e-4 * posterior.kl().mean() / z[0].numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
        for group in opt.param_groups:
            group["lr"] = 1e-3 * (0.05 + 0.95 * (1 - step / steps))
        if step % 500 == 0 or step == steps - 1:
            print(f"vae step {step}: loss {loss.item():.5f} ({time.time() - tic:.0f} s)", flush=True)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        z = torch.cat([vae.encode(part).latent_dist.mode() for part in x.split(256)])
        rec = torch.cat([vae.decode(part).sample for part in z.split(256)])
    vae.register_to_config(scaling_factor=float(1 / z.std()), shift_factor=float(z.mean()))
    return vae, float((rec - x).pow(2).mean())


def build_init_folder(folder: Path, vae_steps: int) -> dict:
    """The untrained SD3-layout pipeline (with the trained VAE) at ``folder``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    from fdistill.models.tiny_pipelines import tiny_clip_encoder, tiny_t5_encoder, tiny_t5_tokenizer
    from fdistill.models.tiny_sd import tiny_clip_tokenizer

    vae, vae_mse = train_vae(vae_steps)
    tokenizer = tiny_clip_tokenizer(WORDS, model_max_length=10)
    torch.manual_seed(1)
    text_encoder = tiny_clip_encoder(tokenizer, "CLIPTextModelWithProjection")
    text_encoder_2 = tiny_clip_encoder(tokenizer, "CLIPTextModelWithProjection")
    t5_tokenizer = tiny_t5_tokenizer(WORDS)
    text_encoder_3 = tiny_t5_encoder(t5_tokenizer, d_model=64)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=4,
                                        attention_head_dim=32, num_attention_heads=4, caption_projection_dim=128,
                                        joint_attention_dim=64, pooled_projection_dim=64, pos_embed_max_size=8)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
                                    vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                    text_encoder_2=text_encoder_2, tokenizer_2=tokenizer, text_encoder_3=text_encoder_3,
                                    tokenizer_3=t5_tokenizer)
    pipe.save_pretrained(folder)
    return {"vae_steps": vae_steps, "vae_reconstruction_mse": vae_mse,
            "transformer_parameters": sum(p.numel() for p in transformer.parameters())}


def main() -> None:
    import json

    from fdistill.training.config import load_config
    from fdistill.training.teacher import TeacherConfig, train_teacher

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", default="outputs/t2i_digits_init", help="where the untrained folder is built")
    parser.add_argument("--asset", default=str(ROOT / "fdistill" / "assets" / "t2i_digits_teacher"))
    parser.add_argument("--vae-steps", type=int, default=1000)
    parser.add_argument("--config", default=str(ROOT / "configs" / "t2i_digits_teacher.yaml"))
    parser.add_argument("overrides", nargs="*", help="teacher config overrides, e.g. steps=100")
    args = parser.parse_args()
    init = Path(args.init) / "pipeline"
    if not (init / "model_index.json").is_file():
        record = build_init_folder(init, args.vae_steps)
        (init.parent / "init.json").write_text(json.dumps(record, indent=1) + "\n")
        print(record)
    config = load_config(TeacherConfig, args.config, [f"model.path={init}", *args.overrides])
    out = train_teacher(config, resume="latest")
    asset = Path(args.asset)
    if asset.exists():
        shutil.rmtree(asset)
    shutil.copytree(out / "pipeline", asset)
    print(f"teacher folder: {out / 'pipeline'}; packed as {asset}")


if __name__ == "__main__":
    main()
