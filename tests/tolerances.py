"""Float comparisons for outputs that are equal in exact arithmetic but not bit-identical.

Two computations of the same float32 value can differ in the last bits when the CPU kernel
changes between them, even on one machine:

- weights reloaded by ``from_pretrained`` come out of one safetensors buffer and are not all
  64-byte aligned, and oneDNN/MKL pick another GEMM code path (another summation order) for
  unaligned operands: measured here, a reloaded tiny Wan model differs by 3.6e-7 from the
  original, and by 0.0 once its parameters are copied into fresh (aligned) tensors;
- the batch size changes GEMM blocking (a text encoder run on 2 prompts vs the same prompts
  repeated to 6 differs by up to 1.4e-6 on some x86 CPUs).

float32 has a unit roundoff of 6e-8; through a few layers of O(100)-term dot products the
relative error grows to ~1e-6 for values of order 1. ``ROUNDING_ATOL`` = 1e-5 bounds that with
room and stays far below what any bug produces (and below 1/255, one step of an 8-bit image).
Exact equality stays where bit-identity holds by construction (the same process, the same
kernel, the same operands), and the assertion says so.
"""

import numpy as np
import torch

ROUNDING_ATOL = 1e-5


def assert_close_up_to_rounding(actual, expected, atol: float = ROUNDING_ATOL) -> None:
    """``actual`` equals ``expected`` up to float32 rounding (see the module docstring)."""
    if isinstance(actual, torch.Tensor) or isinstance(expected, torch.Tensor):
        torch.testing.assert_close(torch.as_tensor(actual), torch.as_tensor(expected), atol=atol, rtol=0)
    else:
        np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), atol=atol, rtol=0)
