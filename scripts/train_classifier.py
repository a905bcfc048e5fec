"""Train the digits classifier used by the offline metrics and ship its weights.

    python scripts/train_classifier.py                      # ~30 s on 1 CPU thread
    python scripts/train_classifier.py --arch resnet --seed 1 --out fdistill/assets/digits_classifier_b.safetensors

Trains a digits classifier (`--arch cnn`: `DigitsClassifier`; `--arch resnet`:
`ResidualDigitsClassifier`, the second, independent feature space "classifier_b") on the 1,500-image
train split with light augmentation (random shifts of up to 2 px, Gaussian noise, and a fraction of
half-size glyphs placed anywhere on the canvas so that frames of moving digits are in-distribution
for per-frame confidence), reports accuracy on the 297 held-out images, and writes `--out` (default
`fdistill/assets/digits_classifier.safetensors`), its metrics next to it (`<out>.json`) and `--report`
(default `reports/<out name without "digits_">.json`: `reports/classifier.json` for the default
`--out`, `reports/classifier_b.json` for the second classifier). Fails if held-out accuracy is
below `--min-accuracy`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fdistill.data.digits import load_digits_tensors
from fdistill.io import atomic_write_text
from fdistill.models.classifier import ARCHITECTURES, ClassifierBase, build_classifier

ROOT = Path(__file__).resolve().parents[1]


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer offset in [-max_shift, max_shift]^2 (background -1)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    offsets = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator)
    return torch.stack([padded[i, :, r : r + h, c : c + w] for i, (r, c) in enumerate(offsets.tolist())])


def small_glyphs(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Halve each image and paste it at a random position on a blank canvas of the same size."""
    b, _, h, w = x.shape
    small = F.avg_pool2d(x, 2)
    out = torch.full_like(x, -1.0)
    rows = torch.randint(0, h - h // 2 + 1, (b,), generator=generator).tolist()
    cols = torch.randint(0, w - w // 2 + 1, (b,), generator=generator).tolist()
    for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
        out[i, :, r : r + h // 2, c : c + w // 2] = small[i]
    return out


def augment(x: torch.Tensor, generator: torch.Generator, p_small: float, noise: float) -> torch.Tensor:
    x = random_shift(x, 2, generator)
    use_small = torch.rand(len(x), generator=generator) < p_small
    if use_small.any():
        x[use_small] = small_glyphs(x[use_small], generator)
    sigma = noise * torch.rand(len(x), 1, 1, 1, generator=generator)
    return (x + sigma * torch.randn(x.shape, generator=generator)).clamp(-1.0, 1.0)


@torch.no_grad()
def accuracy(model: ClassifierBase, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


def atomic_write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="cnn")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--p-small", type=float, default=0.25, help="fraction of half-size glyphs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-accuracy", type=float, default=0.97)
    parser.add_argument("--out", type=Path, default=ROOT / "fdistill/assets/digits_classifier.safetensors")
    parser.add_argument("--report", type=Path, default=None,
                        help="metrics JSON (default: reports/<out name without 'digits_'>.json)")
    args = parser.parse_args()
    # Derived from --out so that training a second classifier never overwrites reports/classifier.json.
    report = args.report or ROOT / "reports" / f"{args.out.stem.removeprefix('digits_')}.json"

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    x_train, y_train = load_digits_tensors("train")
    x_test, y_test = load_digits_tensors("test")

    model = build_classifier(args.arch)
    steps_per_epoch = -(-len(x_train) // args.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.15
    )
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        total = 0.0
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i : i + args.batch_size]
            xb = augment(x_train[idx].clone(), gen, args.p_small, noise=0.15)
            loss = F.cross_entropy(model(xb), y_train[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % 10 == 0 or epoch + 1 == args.epochs:
            print(f"epoch {epoch + 1:3d}  loss {total / len(x_train):.4f}  "
                  f"held-out acc {accuracy(model, x_test, y_test):.4f}")
    seconds = time.perf_counter() - start

    eval_gen = torch.Generator().manual_seed(1234)
    metrics = {
        "heldout_accuracy": accuracy(model, x_test, y_test),
        "heldout_accuracy_shifted": accuracy(model, random_shift(x_test, 2, eval_gen), y_test),
        "heldout_accuracy_half_size": accuracy(model, small_glyphs(x_test, eval_gen), y_test),
        "train_accuracy": accuracy(model, x_train, y_train),
        "num_train": len(x_train),
        "num_heldout": len(x_test),
        "epochs": args.epochs,
        "seed": args.seed,
        "threads": args.threads,
        "train_seconds": round(seconds, 1),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "arch": args.arch,
        "config": model.config,
        "torch_version": torch.__version__,
    }
    print(json.dumps(metrics, indent=2))
    if metrics["heldout_accuracy"] < args.min_accuracy:
        raise SystemExit(f"held-out accuracy {metrics['heldout_accuracy']:.4f} < {args.min_accuracy}")
    model.save(args.out)
    atomic_write_json(args.out.with_suffix(".json"), metrics)
    atomic_write_json(report, metrics)
    print(f"wrote {args.out} and {report}")


if __name__ == "__main__":
    main()
