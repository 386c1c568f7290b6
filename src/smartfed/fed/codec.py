"""Numeric codecs of the trainable state on the wire (``fed.wire_dtype`` [D]); no record keys here.

- bfloat16: round-to-nearest-even float32 -> bf16 (torch's conversion), sent as the raw 16 bits in
  a ``uint16`` array (numpy, and so Flower's ``Array``, has no bfloat16); decoding shifts the bits
  back into the top half of a float32, which is exact. Relative error <= 2^-8 per value (8
  significant bits); NaN and Inf survive.
- int8: per-tensor symmetric quantisation ``q = round(x / s)``, ``s = max|x| / 127`` (float32),
  ``q`` in ``[-127, 127]``; decoding is ``q * s``, abs error <= ``s / 2`` per value. A tensor with
  any NaN/Inf is sent as ``q = 0, s = NaN`` so that it decodes to all-NaN and the server's
  finiteness check still rejects it. An all-zero tensor has ``s = 0``.
"""

from __future__ import annotations

import numpy as np
import torch

INT8_MAX = 127


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16; return their bit patterns, same shape, ``uint16``."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16).copy()


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    """Upcast bfloat16 bit patterns (``uint16``) to float32 exactly; same shape."""
    wide = np.ascontiguousarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)
    return wide.view(np.float32)


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Symmetric per-tensor int8 quantisation of ``x`` (any shape, float).

    Returns:
        ``(q, scale)``: ``q`` int8 of ``x``'s shape, ``scale`` a float32 value as a Python float
        (``nan`` when ``x`` is not all-finite, 0 when ``x`` is all zeros).
    """
    x32 = np.asarray(x, dtype=np.float32)
    if x32.size == 0:
        return np.zeros(x32.shape, dtype=np.int8), 0.0
    if not np.isfinite(x32).all():
        return np.zeros(x32.shape, dtype=np.int8), float("nan")
    amax = float(np.abs(x32).max())
    if amax == 0.0:
        return np.zeros(x32.shape, dtype=np.int8), 0.0
    scale = np.float32(amax / INT8_MAX)
    q = np.clip(np.rint(x32 / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, float(scale)


def dequantize_int8(q: np.ndarray, scale: float) -> np.ndarray:
    """``q * scale`` in float32 (``q`` int8, any shape); NaN scale gives all-NaN."""
    return np.asarray(q, dtype=np.int8).astype(np.float32) * np.float32(scale)
