"""EEQA importance: the closed forms against brute-force materialised expert outputs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from smartfed.quota.importance import (
    ImportanceTracker,
    expert_perturbation,
    selected_importance,
    token_importance,
)


def _brute(ref: torch.Tensor, coef: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos(r, r + coef_i * b_i) with every expert output materialised, float64."""
    ref, coef, b = ref.double(), coef.double(), b.double()
    e = coef[:, :, None] * b.T[None, :, :]  # (N, M, d)
    r = ref[:, None, :].expand_as(e)
    return 1 - F.cosine_similarity(r, r + e, dim=-1)


def test_perturbation_matches_brute_force_over_magnitudes() -> None:
    # Arrange: expert outputs from 1e-3 to 1e2 times the reference norm
    g = torch.Generator().manual_seed(0)
    n, m, d = 16, 12, 24
    ref = torch.randn(n, d, generator=g)
    b = torch.randn(d, m, generator=g)
    coef = torch.randn(n, m, generator=g) * torch.logspace(-3, 2, m)
    # Act
    got = expert_perturbation(ref, coef, ref @ b, b.pow(2).sum(0))
    # Assert
    want = _brute(ref, coef, b)
    torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=1e-9)
    assert got.min() >= 0 and got.max() <= 2


def test_small_perturbations_keep_relative_precision() -> None:
    # 1 - cos ~ 1e-8 here: the naive float32 formula would return 0 or noise.
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(4, 64, generator=g)
    b = torch.randn(64, 3, generator=g)
    coef = torch.full((4, 3), 1e-4)
    got = expert_perturbation(ref, coef, ref @ b, b.pow(2).sum(0)).double()
    want = _brute(ref, coef, b)
    assert (want > 0).all()
    torch.testing.assert_close(got, want, rtol=1e-2, atol=0.0)


def test_perturbation_edge_cases() -> None:
    ref = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[1.0], [0.0]])  # b parallel to r
    coef = torch.tensor([[2.0], [1.0], [0.0], [-1.0]])
    d = expert_perturbation(ref, coef, ref @ b, b.pow(2).sum(0))
    # parallel growth: no rotation; zero ref / zero expert: 0; r + e = 0 (erased output): 1
    assert d.flatten().tolist() == [0.0, 0.0, 0.0, 1.0]
    b_perp = torch.tensor([[0.0], [1.0]])
    d = expert_perturbation(ref[:1], torch.tensor([[1.0]]), ref[:1] @ b_perp, torch.ones(1))
    torch.testing.assert_close(d, torch.tensor([[1 - 2**-0.5]]))
    flip = expert_perturbation(ref[:1], torch.tensor([[-3.0]]), ref[:1] @ b, torch.ones(1))
    torch.testing.assert_close(flip, torch.tensor([[2.0]]))  # r + e = -2 r


@pytest.mark.parametrize(("d_in", "d_out", "expect_ref"), [(8, 8, "x"), (8, 4, "y")])
def test_token_importance_auto_reference(d_in: int, d_out: int, expect_ref: str) -> None:
    g = torch.Generator().manual_seed(2)
    n, m = 5, 6
    x = torch.randn(n, d_in, generator=g, dtype=torch.bfloat16)
    y = torch.randn(n, d_out, generator=g, dtype=torch.bfloat16)
    z = torch.randn(n, m, generator=g, dtype=torch.bfloat16)
    b = torch.randn(d_out, m, generator=g)
    scale = torch.rand(m, generator=g) + 0.5
    got = token_importance(x, y, z, b, scale, b.pow(2).sum(0)).double()
    ref = x if expect_ref == "x" else y
    want = _brute(ref.float(), z.float() * scale, b)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-7)
    out = token_importance(x, y, z, b, scale, b.pow(2).sum(0), reference="output").double()
    torch.testing.assert_close(out, _brute(y.float(), z.float() * scale, b), rtol=1e-3, atol=1e-7)
    if d_in != d_out:
        with pytest.raises(ValueError, match="d_in == d_out"):
            token_importance(x, y, z, b, scale, b.pow(2).sum(0), reference="input")


def test_selected_importance_renormalises_gates_and_counts_selections() -> None:
    # Arrange: 3 tokens, M = 4, K = 2
    d = torch.tensor([[0.1, 0.2, 0.3, 0.4], [1.0, 1.0, 1.0, 1.0], [0.5, 0.0, 0.0, 0.5]])
    weights = torch.tensor([[0.3, 0.1], [0.2, 0.2], [0.6, 0.2]])
    indices = torch.tensor([[3, 0], [1, 2], [0, 3]])
    # Act
    sums, counts = selected_importance(d, weights, indices, 4)
    # Assert: token 0 -> 0.75*0.4 on e3, 0.25*0.1 on e0; token 1 -> .5, .5; token 2 -> .375, .125
    torch.testing.assert_close(sums, torch.tensor([0.025 + 0.375, 0.5, 0.5, 0.3 + 0.125]))
    assert counts.tolist() == [2, 1, 1, 2]
    # a matrix's total does not scale with K: every token spreads one unit of gate weight
    assert sums.sum().item() == pytest.approx(0.325 + 1.0 + 0.5)


# --- the tracker over MoRE observers -----------------------------------------------------------


class _Handle:
    def __init__(self, hooks: list, fn: object) -> None:  # type: ignore[type-arg]
        self.hooks, self.fn = hooks, fn

    def remove(self) -> None:
        self.hooks.remove(self.fn)


class _StandInMoRE(nn.Module):
    """Test double of the MoRELinear observer contract (docs/ARCHITECTURE.md): top-K over M."""

    def __init__(self, d_in: int, d_out: int, adapters: list[int], k: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        m = len(adapters)
        self.base = nn.Linear(d_in, d_out, bias=False)
        self.bank = nn.Module()
        self.bank.register_buffer("A", torch.randn(m, d_in, generator=g))
        self.bank.register_buffer("B", torch.randn(d_out, m, generator=g))
        self.bank.register_buffer("scaling", torch.rand(m, generator=g) + 0.5)
        self.bank.register_buffer("adapter_index", torch.tensor(adapters))
        self.router = torch.randn(m, d_in, generator=g)
        self.k = k
        self.hooks: list = []  # type: ignore[type-arg]

    def add_observer(self, fn: object) -> _Handle:
        self.hooks.append(fn)
        return _Handle(self.hooks, fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        z = x @ self.bank.A.T
        weights, indices = torch.softmax(x @ self.router.T, -1).topk(self.k, -1)
        routing = SimpleNamespace(weights=weights, indices=indices)
        for fn in self.hooks:
            fn(SimpleNamespace(x=x.detach(), base_out=y.detach(), z=z.detach(), routing=routing))
        coef = torch.zeros_like(z).scatter(-1, indices, weights) * z * self.bank.scaling
        return y + coef @ self.bank.B.T


class _TwoMatrices(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = _StandInMoRE(8, 8, [0, 0, 0, 1, 1, 1], k=2, seed=1)
        self.v_proj = _StandInMoRE(8, 4, [0, 0, 1, 1, 2, 2], k=3, seed=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q_proj(x).sum() + self.v_proj(x).sum()


def _expected(layer: _StandInMoRE, x: torch.Tensor, keep: torch.Tensor) -> list[float]:
    """Brute force: mean over kept tokens of renormalised gate x (1 - cos(r, r + e_i))."""
    x = x[keep]
    y, z = layer.base(x).detach(), x @ layer.bank.A.T
    weights, indices = torch.softmax(x @ layer.router.T, -1).topk(layer.k, -1)
    ref = x if x.shape[-1] == y.shape[-1] else y
    d = _brute(ref, z * layer.bank.scaling, layer.bank.B)
    gate = torch.zeros_like(z, dtype=torch.float64).scatter(
        -1, indices, (weights / weights.sum(-1, keepdim=True)).double()
    )
    return ((gate * d).sum(0) / x.shape[0]).tolist()


def test_tracker_scores_and_usage_match_brute_force_and_respect_the_mask() -> None:
    # Arrange
    model = _TwoMatrices()
    x = torch.randn(3, 5, 8)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = False  # padding
    # Act
    with torch.no_grad(), ImportanceTracker(model) as tracker:
        tracker.set_token_mask(mask)
        model(x)
    # Assert
    scores, usage = tracker.scores(), tracker.usage()
    assert set(scores) == {"q_proj", "v_proj"}
    for name in ("q_proj", "v_proj"):
        layer = getattr(model, name)
        torch.testing.assert_close(
            torch.tensor(scores[name], dtype=torch.float64),
            torch.tensor(_expected(layer, x, mask), dtype=torch.float64),
            rtol=1e-3,
            atol=1e-7,
        )
        assert len(usage[name]) == 3  # adapters 0..2 over the whole pool
        assert sum(usage[name]) == layer.k * int(mask.sum())
        assert all(isinstance(v, float) for v in scores[name])
    assert tracker.tokens() == {"q_proj": 13, "v_proj": 13}
    assert usage["q_proj"][2] == 0
    assert model.q_proj.hooks == [] and model.v_proj.hooks == []  # observers removed on exit


def test_tracker_reset_and_errors() -> None:
    model = _TwoMatrices()
    with ImportanceTracker(model) as tracker:
        model(torch.randn(2, 8))
        tracker.reset()
        assert tracker.tokens() == {"q_proj": 0, "v_proj": 0}
        tracker.set_token_mask(torch.ones(7, dtype=torch.bool))
        with pytest.raises(ValueError, match="token mask shape"):
            model(torch.randn(2, 8))
    with pytest.raises(ValueError, match="no MoRE layer"):
        ImportanceTracker(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="reference="):
        ImportanceTracker(model, reference="sideways")  # type: ignore[arg-type]
