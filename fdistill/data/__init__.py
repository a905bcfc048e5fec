"""Offline testbeds: scikit-learn digits (16x16 images) and procedural moving digits (videos)."""

from fdistill.data.digits import DigitsDataset, load_digits_tensors
from fdistill.data.moving_digits import MovingDigits, MovingDigitsSample

__all__ = ["DigitsDataset", "MovingDigits", "MovingDigitsSample", "load_digits_tensors"]
