"""EEQA importance on the client: per-expert contribution scores gathered during local training.

The paper [P]: an expert's importance comes from the cosine similarity between its output and
the input representation; the exact formula is not public. Our formula [D] (reasons in
docs/method.md, "EEQA importance"):

* Per token and expert, the *perturbation* ``d_i = 1 - cos(r, r + E_i(x))`` with
  ``E_i(x) = s_i z_i B[:, i]`` (``z = A x``) and one reference for every matrix [D]:
  ``r = rms(x) sqrt(d_out) W0 x / |W0 x|``, the direction of the frozen output with the
  per-coordinate RMS of the input. ``cos(r, r + e)`` is a function of the paper's ``cos(e, r)`` and
  of ``rms(e) / rms(x)``, so ``d_i`` is 0 for an expert that adds nothing and grows as it turns the
  representation away from ``r``. The score does not change when a matrix's input or its base
  weight is rescaled, and it does not grow with ``d_out``, so square (q), GQA (k/v) and MLP
  matrices are compared on one scale (the former references, ``x`` for square matrices and
  ``W0 x`` otherwise, made a score follow ``(|W0 x| / |x|)^2``).
* Only the top-K experts the router selected count, each with its gate renormalised over the
  selected set (a token spreads one unit of weight), so a matrix's score does not grow with its own
  K_m (no rich-get-richer loop between rounds).
* Expert score = mean over tokens of ``g~_i * d_i`` (0 where not selected); matrix score (server) =
  sum over its experts = the gate-weighted mean perturbation of that matrix.

Everything is computed from the cheap products ``r @ B`` (no ``(..., M, d_out)`` tensor).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from smartfed.model.state import more_layers
from smartfed.routing.layer import MoREForwardInfo, MoRELinear

_EPS = 1e-12
Reference = Literal["normalized", "auto", "input", "output"]
REFERENCES = ("normalized", "auto", "input", "output")


def expert_perturbation(
    ref: torch.Tensor, coef: torch.Tensor, ref_dot_b: torch.Tensor, b_sq: torch.Tensor
) -> torch.Tensor:
    """Return ``1 - cos(r, r + coef_i * b_i)`` for every expert, without forming ``r + e_i``.

    Uses ``|r|^2 |r+e|^2 - (r.(r+e))^2 = |r|^2 |e|^2 - (r.e)^2`` so that small perturbations keep
    their precision: ``1 - cos = sin^2 / (1 + cos)`` when ``cos > 0``.

    Args:
        ref: reference vectors, shape ``(N, d)``.
        coef: expert output coefficients ``s_i z_i``, shape ``(N, M)``.
        ref_dot_b: ``ref @ B``, shape ``(N, M)``.
        b_sq: squared column norms ``|B[:, i]|^2``, shape ``(M,)``.

    Returns:
        Perturbations in ``[0, 2]``, shape ``(N, M)``; 0 where ``r`` or ``e_i`` is zero, 1 where
        ``r + e_i`` is zero.
    """
    r_sq = ref.pow(2).sum(-1, keepdim=True)  # (N, 1)
    r_dot_e = coef * ref_dot_b  # (N, M)
    e_sq = coef.pow(2) * b_sq  # (N, M)
    out_sq = r_sq + 2 * r_dot_e + e_sq  # |r + e|^2
    denom = (r_sq * out_sq).clamp_min(_EPS).sqrt()
    cos = (r_sq + r_dot_e) / denom
    sin_sq = (r_sq * e_sq - r_dot_e.pow(2)).clamp_min(0) / denom.pow(2)
    d = torch.where(cos > 0, sin_sq / (1 + cos), 1 - cos).clamp(0, 2)
    zero = (r_sq <= _EPS) | (e_sq <= _EPS)
    return d.masked_fill(zero, 0.0)


def selected_importance(
    d_sel: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, num_experts: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum gate-weighted perturbations and selection counts of the selected experts over tokens.

    Args:
        d_sel: perturbations of the selected experts, shape ``(N, K)`` (aligned with ``indices``).
        weights: routing weights of the selected experts, shape ``(N, K)``.
        indices: selected expert ids, shape ``(N, K)``, int64.
        num_experts: M.

    Returns:
        ``(score_sum, counts)``: per-expert sums of ``g~_i * d_i`` over tokens, shape ``(M,)``
        float32, and how many tokens selected each expert, shape ``(M,)`` int64. ``g~`` is the gate
        renormalised over the K selected experts [D].
    """
    w = weights.float().abs()
    w = w / w.sum(-1, keepdim=True).clamp_min(_EPS)
    contrib = (w * d_sel).reshape(-1)
    flat = indices.reshape(-1)
    score_sum = torch.zeros(num_experts, dtype=torch.float32, device=d_sel.device)
    score_sum.index_add_(0, flat, contrib)
    counts = torch.bincount(flat, minlength=num_experts)
    return score_sum, counts


def token_importance(
    x: torch.Tensor,
    base_out: torch.Tensor,
    z: torch.Tensor,
    b: torch.Tensor,
    scale: torch.Tensor,
    b_sq: torch.Tensor,
    reference: Reference = "normalized",
    indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return the perturbation of every (or every selected) expert per token of one MoRE matrix.

    Args:
        x: layer input, shape ``(N, d_in)``.
        base_out: frozen output ``W0 x``, shape ``(N, d_out)``.
        z: expert projections ``A x``, shape ``(N, M)``.
        b: expert output directions ``B``, shape ``(d_out, M)``, float32.
        scale: per-expert LoRA scaling ``s_i``, shape ``(M,)``, float32.
        b_sq: ``|B[:, i]|^2``, shape ``(M,)``, float32.
        reference: ``normalized`` (``r = rms(x) sqrt(d_out) W0x / |W0x|``, every matrix) [D]; the
            scale-
            dependent ``input`` (``r = x``, needs ``d_in == d_out``), ``output`` (``r = W0 x``)
            and ``auto`` (input when the dimensions agree, else output: the reference before the
            normalized one, kept to measure the difference).
        indices: selected expert ids ``(N, K)``; when given only those are evaluated (the
            product ``r @ B`` is still one GEMM, the elementwise work shrinks from M to K).

    Returns:
        ``d``, shape ``(N, M)``, or ``(N, K)`` aligned with ``indices``; float32.

    Raises:
        ValueError: ``reference="input"`` on a matrix with ``d_in != d_out`` (internal misuse).
    """
    ref = reference_vectors(x, base_out, reference)
    if indices is None:
        return expert_perturbation(ref, z.float() * scale, ref @ b, b_sq)
    coef = z.gather(-1, indices).float() * scale[indices]
    return expert_perturbation(ref, coef, (ref @ b).gather(-1, indices), b_sq[indices])


def reference_vectors(
    x: torch.Tensor, base_out: torch.Tensor, reference: Reference
) -> torch.Tensor:
    """The reference ``r`` of every token, float32, shape ``(N, d_out)``.

    Args:
        x: layer input, shape ``(N, d_in)``.
        base_out: frozen output ``W0 x``, shape ``(N, d_out)``.
        reference: see :func:`token_importance`.

    Raises:
        ValueError: ``reference="input"`` on a matrix with ``d_in != d_out`` (internal misuse).
    """
    d_in, d_out = x.shape[-1], base_out.shape[-1]
    if reference == "normalized":  # direction of W0 x, per-coordinate RMS of x
        y = base_out.float()
        x_rms = x.float().norm(dim=-1, keepdim=True) * (d_out / d_in) ** 0.5
        return y * (x_rms / y.norm(dim=-1, keepdim=True).clamp_min(_EPS))
    use_input = reference == "input" or (reference == "auto" and d_in == d_out)
    if use_input and d_in != d_out:
        raise ValueError(f"reference='input' needs d_in == d_out, got {d_in} vs {d_out}")
    return (x if use_input else base_out).float()


@dataclass
class _MatrixStats:
    """Frozen per-matrix constants and running sums (all on the layer's device)."""

    b: torch.Tensor  # (d_out, M) float32
    b_sq: torch.Tensor  # (M,) float32
    scale: torch.Tensor  # (M,) float32
    adapter_index: torch.Tensor  # (M,) int64
    score_sum: torch.Tensor  # (M,) float64
    counts: torch.Tensor  # (M,) int64
    tokens: int = 0


class ImportanceTracker:
    """Collect EEQA importance and expert usage from every MoRE layer while active.

    Use as a context manager around local training (docs/method.md §5)::

        with ImportanceTracker(model) as tracker:
            for batch in loader:
                tracker.set_token_mask(batch["attention_mask"])  # optional: skip padding
                loss = model(**batch).loss
                ...
        reply = {"scores": tracker.scores(), "usage": tracker.usage()}

    Observers (``MoRELinear.add_observer``) only read detached tensors, under ``torch.no_grad``;
    leaving the context removes them.
    The formula is in the module docstring; the reasons are in docs/method.md.

    Args:
        model: a model with MoRE layers injected.
        reference: ``normalized`` [D], or the scale-dependent ``auto``, ``input`` and
            ``output`` (see :func:`token_importance`).
        num_adapters: pool size, the length of every :meth:`usage` list; ``None`` = the highest
            adapter index any matrix uses, plus one.
        single_thread: run the observer's small kernels on one intra-op thread, restoring the
            count afterwards. Off by default [D]: under heavy contention it made the observer
            itself cheaper (a 2-thread ``(1024, 576) @ (576, 64)`` took 68 ms vs 1.4 ms on one
            thread), but with the machine quieter the toggle slowed the rest of the SmolLM2
            forward (1.71 s vs 1.48 s without it, 1.36 s with no tracker); docs/method.md.
    Raises:
        ValueError: ``model`` has no MoRE layer, or an unknown ``reference``.
    """

    def __init__(
        self,
        model: nn.Module,
        reference: Reference = "normalized",
        num_adapters: int | None = None,
        single_thread: bool = False,
    ) -> None:
        if reference not in REFERENCES:
            raise ValueError(f"reference={reference!r}: choose one of {REFERENCES}")
        self._layers: dict[str, MoRELinear] = more_layers(model)
        if not self._layers:
            raise ValueError("ImportanceTracker: the model has no MoRE layer; inject MoRE first")
        self.reference: Reference = reference
        self.single_thread = single_thread
        self.observer_seconds = 0.0
        """Wall time spent inside the observers so far (a direct cost measurement)."""
        self._stats = {name: _init_stats(layer) for name, layer in self._layers.items()}
        seen = 1 + max(int(s.adapter_index.max()) for s in self._stats.values())
        self._num_adapters = max(seen, num_adapters or 0)
        self._handles: list[Any] = []
        self._mask: torch.Tensor | None = None

    def __enter__(self) -> ImportanceTracker:
        for name, layer in self._layers.items():
            self._handles.append(layer.add_observer(self._observer(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def set_token_mask(self, mask: torch.Tensor | None) -> None:
        """Count only tokens where ``mask`` (shape ``(batch, seq)``) is true; ``None`` = all."""
        self._mask = None if mask is None else mask.detach().bool()

    def _observer(self, name: str) -> Callable[[MoREForwardInfo], None]:
        stats = self._stats[name]

        def observe(info: MoREForwardInfo) -> None:
            start = time.perf_counter()
            threads = torch.get_num_threads()
            if self.single_thread:
                torch.set_num_threads(1)
            try:
                with torch.no_grad():
                    self._accumulate(stats, info)
            finally:
                torch.set_num_threads(threads)
                self.observer_seconds += time.perf_counter() - start

        return observe

    def _accumulate(self, stats: _MatrixStats, info: MoREForwardInfo) -> None:
        x, y, z = info.x, info.base_out, info.z
        lead = x.shape[:-1]  # routings may broadcast over tokens (e.g. a fixed routing)
        weights = info.routing.weights.expand(*lead, -1)
        indices = info.routing.indices.expand(*lead, -1)
        keep = None
        if self._mask is not None:
            if self._mask.shape != x.shape[:-1]:
                raise ValueError(
                    f"token mask shape {tuple(self._mask.shape)} != tokens {tuple(x.shape[:-1])}"
                )
            keep = self._mask.reshape(-1).to(x.device)
        rows = [t.reshape(-1, t.shape[-1]) for t in (x, y, z, weights, indices)]
        if keep is not None:
            rows = [t[keep] for t in rows]
        x2, y2, z2, w2, i2 = rows
        if x2.shape[0] == 0:
            return
        idx = i2.long()
        d = token_importance(x2, y2, z2, stats.b, stats.scale, stats.b_sq, self.reference, idx)
        sums, counts = selected_importance(d, w2, idx, stats.b.shape[1])
        stats.score_sum += sums.double()
        stats.counts += counts
        stats.tokens += x2.shape[0]

    def scores(self) -> dict[str, list[float]]:
        """Per matrix, per expert: mean over observed tokens of ``g~_i * d_i`` (plain floats)."""
        return {
            name: (s.score_sum / max(s.tokens, 1)).tolist()
            for name, s in sorted(self._stats.items())
        }

    def expert_usage(self) -> dict[str, list[int]]:
        """Per matrix, per expert: how many tokens selected it."""
        return {name: s.counts.tolist() for name, s in sorted(self._stats.items())}

    def usage(self) -> dict[str, list[int]]:
        """Per matrix: selections summed per source adapter (index = position in the pool)."""
        out: dict[str, list[int]] = {}
        for name, s in sorted(self._stats.items()):
            per = torch.zeros(self._num_adapters, dtype=torch.int64, device=s.counts.device)
            per.index_add_(0, s.adapter_index, s.counts)
            out[name] = per.tolist()
        return out

    def tokens(self) -> dict[str, int]:
        """Per matrix: how many tokens were observed."""
        return {name: s.tokens for name, s in sorted(self._stats.items())}

    def reset(self) -> None:
        """Zero all running sums (e.g. between rounds when a tracker is reused)."""
        for s in self._stats.values():
            s.score_sum.zero_()
            s.counts.zero_()
            s.tokens = 0


def _init_stats(layer: MoRELinear) -> _MatrixStats:
    """Copy the frozen expert constants of one MoRE layer into float32 tensors."""
    bank = layer.bank
    b = bank.B.detach().float()  # (d_out, M)
    m = b.shape[1]
    return _MatrixStats(
        b=b,
        b_sq=b.pow(2).sum(0),
        scale=bank.scaling.detach().float().reshape(m),
        adapter_index=bank.adapter_index.detach().long().reshape(m),
        score_sum=torch.zeros(m, dtype=torch.float64, device=b.device),
        counts=torch.zeros(m, dtype=torch.int64, device=b.device),
    )
