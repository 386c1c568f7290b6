"""Bench statistics: means over seeds, cumulative bytes, to-target rounds/bytes/ratios, deltas."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as hst

from smartfed.report import bench_stats as st


def _rows(losses: list[float], acc: list[float | None], bytes_per_round: int = 100) -> list[dict]:
    return [
        {
            "round": i + 1,
            "eval_loss": loss,
            "train_loss": loss + 0.1,
            "bytes_up": bytes_per_round // 2,
            "bytes_down": bytes_per_round // 2,
            "wall_s": 2.0,
            "energy_kwh_clients": 1e-4,
            "energy_kwh_server": 1e-5,
            **({"eval_accuracy": a} if a is not None else {}),
        }
        for i, (loss, a) in enumerate(zip(losses, acc, strict=True))
    ]


def test_mean_std_ignores_missing_and_nan() -> None:
    assert st.mean_std([1.0, 3.0, None, math.nan]) == {"mean": 2.0, "std": math.sqrt(2.0), "n": 2}
    assert st.mean_std([]) == {"mean": None, "std": None, "n": 0}
    assert st.mean_std([5]) == {"mean": 5.0, "std": 0.0, "n": 1}


def test_per_round_means_over_seeds_and_cumulates_bytes() -> None:
    a = _rows([3.0, 2.0, 1.0], [None, 0.2, 0.4], 100)
    b = _rows([1.0, 1.0], [None, 0.0], 300)  # seed b stopped after round 2
    out = st.per_round([a, b], "accuracy")
    assert [r["round"] for r in out] == [1, 2]  # only rounds every seed has
    assert out[0]["eval_loss"]["mean"] == 2.0 and "eval_accuracy" not in out[0]
    assert out[1]["eval_accuracy"]["mean"] == 0.1
    assert out[1]["bytes_cum"] == (200 + 600) / 2
    assert math.isclose(out[0]["energy_kwh"]["mean"], 1.1e-4)


def test_to_target_rounds_bytes_and_ratios() -> None:
    fedit = {"per_round": st.per_round([_rows([4, 3, 2, 1.5], [0, 0, 0.1, 0.3], 1000)], "accuracy")}
    fast = {
        "per_round": st.per_round([_rows([2, 1.4, 1.2, 1.0], [0.3, 0.4, 0.5, 0.5], 10)], "accuracy")
    }
    never = {"per_round": st.per_round([_rows([5, 5, 5, 5], [0, 0, 0, 0], 10)], "accuracy")}
    tt = st.to_target({"fedit": fedit, "smartfed": fast, "x": never}, "fedit", "eval_loss")
    assert tt["fedit"]["round"] == 4 and tt["fedit"]["target"] == 1.5
    assert tt["smartfed"]["round"] == 2 and tt["smartfed"]["bytes"] == 20
    assert tt["smartfed"]["ratio_rounds"] == 2.0 and tt["smartfed"]["ratio_bytes"] == 4000 / 20
    assert not tt["x"]["reached"] and tt["x"]["ratio_rounds"] is None
    acc = st.to_target({"fedit": fedit, "smartfed": fast}, "fedit", "eval_accuracy")
    assert acc["smartfed"]["round"] == 1 and acc["fedit"]["round"] == 4
    assert st.to_target({"smartfed": fast}, "fedit", "eval_loss") == {}
    d = st.deltas({"fedit": fedit, "smartfed": fast}, "eval_accuracy", "fedit")
    assert d["fedit"] == 0 and math.isclose(d["smartfed"], 0.2)


@given(hst.lists(hst.floats(0.01, 10), min_size=1, max_size=8))
def test_reference_reaches_its_own_target_by_its_last_round(losses: list[float]) -> None:
    ref = {"per_round": st.per_round([_rows(losses, [None] * len(losses))], "accuracy")}
    tt = st.to_target({"fedit": ref}, "fedit", "eval_loss")["fedit"]
    assert tt["reached"] and 1 <= tt["round"] <= len(losses)
    assert losses[tt["round"] - 1] <= losses[-1]
    assert all(x > losses[-1] for x in losses[: tt["round"] - 1])
    assert tt["ratio_rounds"] == 1.0


def test_no_accuracy_target_when_reference_scores_zero() -> None:
    zero = {"per_round": st.per_round([_rows([2.0, 1.0], [0.0, 0.0])], "accuracy")}
    some = {"per_round": st.per_round([_rows([2.0, 1.0], [0.1, 0.2])], "accuracy")}
    assert st.to_target({"fedit": zero, "smartfed": some}, "fedit", "eval_accuracy") == {}
    assert st.to_target({"fedit": zero, "smartfed": some}, "fedit", "eval_loss")["smartfed"][
        "reached"
    ]


def test_splice_readme_replaces_only_the_marked_block() -> None:
    from smartfed.report.bench_render import splice_readme

    readme = "intro\n<!-- results:begin -->\nold\n<!-- results:end -->\nreading\n"
    gen = "# `cpu-mini` bench\n\n| a |\n\n![curves](cpu-mini_x_curves.png)\n"
    out = splice_readme(readme, gen, "benchmarks/results")
    assert out.startswith("intro\n<!-- results:begin -->\n### `cpu-mini` bench")
    assert "![curves](benchmarks/results/cpu-mini_x_curves.png)" in out and "old" not in out
    assert out.endswith("<!-- results:end -->\nreading\n")
    with pytest.raises(ValueError, match="results:begin"):
        splice_readme("no markers", gen, ".")
