"""A tiny Stable-Diffusion-shaped component set, built in code (no hub, no downloads).

``tiny_sd_components()`` returns the same component names and classes as an SD1.5 checkpoint
directory (``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler``), so code that proves
the text path on these loads a real SD1.5 directory unchanged with ``from_pretrained(local_path)``.

The tokenizer is a real ``CLIPTokenizer`` (byte-level BPE, CLIP's pre-tokenisation) over a small
vocabulary: the 512 byte symbols (with and without the end-of-word suffix ``</w>``), merges that
spell a few dozen caption words as single tokens, and CLIP's two special tokens. It is written as
``vocab.json`` + ``merges.txt`` to a temporary folder and loaded from there, the way every
transformers version builds a CLIP tokenizer offline.
"""

from __future__ import annotations

import json
import tempfile
from itertools import pairwise
from pathlib import Path

import torch

__all__ = ["tiny_sd_components", "tiny_clip_tokenizer", "SD15_SCHEDULER"]

SD15_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)
"""SD1.5's ``scheduler/scheduler_config.json`` (DDIM form)."""

SD15_VAE_SCALING_FACTOR = 0.18215

CAPTION_WORDS = (
    "a an the of in on with and photo picture drawing image digit number zero one two three four five "
    "six seven eight nine cat dog bird car house tree red green blue black white small large"
).split()

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def _bpe(parts: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word: repeatedly merge the adjacent pair of lowest rank."""
    while len(parts) > 1:
        rank, i = min((ranks.get(pair, len(ranks)), i) for i, pair in enumerate(pairwise(parts)))
        if rank == len(ranks):
            break
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]
    return parts


def _vocab_and_merges(words: tuple[str, ...] | list[str]) -> tuple[dict[str, int], list[str]]:
    """CLIP-style BPE tables: byte symbols, then merges until BPE spells each word as one token.

    New merges rank after all earlier ones, so they never change how earlier words are split.
    """
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        parts = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        while len(parts) > 1:
            ranks[parts[0], parts[1]] = len(ranks)
            vocab.append(parts[0] + parts[1])
            parts = _bpe(parts, ranks)
    vocab += [BOS, EOS]
    return {token: i for i, token in enumerate(vocab)}, [f"{a} {b}" for a, b in ranks]


def tiny_clip_tokenizer(words: tuple[str, ...] | list[str] = CAPTION_WORDS, model_max_length: int = 77):
    """A ``CLIPTokenizer`` over byte symbols plus whole-word merges for ``words`` (~560 tokens)."""
    from transformers import CLIPTokenizer

    vocab, merges = _vocab_and_merges(words)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=model_max_length)


def tiny_sd_components(seed: int = 0, prediction_type: str = "epsilon") -> dict:
    """SD1.5-shaped components at toy size: 16×16 RGB images, 8×8×4 latents, 32-dim text features.

    Returns ``{"unet", "vae", "text_encoder", "tokenizer", "scheduler"}``:
    ``UNet2DConditionModel`` (channels 32/64, one cross-attention level, cross_attention_dim 32),
    ``AutoencoderKL`` (channels 32/64: 2× downsampling, 4 latent channels, SD's scaling factor),
    ``CLIPTextModel`` (hidden 32, 2 layers, 2 heads, 77 positions), ``CLIPTokenizer`` and a
    ``DDIMScheduler`` with SD1.5's betas and the given ``prediction_type`` ("epsilon" as SD1.5,
    "v_prediction" as SD2). Weights are random, drawn from ``torch.manual_seed(seed)`` (the global
    RNG state is restored afterwards).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(32, 64),
            latent_channels=4,
            sample_size=16,
            scaling_factor=SD15_VAE_SCALING_FACTOR,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=37,
                projection_dim=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    scheduler = DDIMScheduler(**SD15_SCHEDULER, prediction_type=prediction_type)
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }
