"""Bench statistics: means over seeds, cumulative bytes, to-target rounds/bytes/ratios, deltas."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from smartfed_bench import stats as st


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
    got = st.mean_std([1.0, 3.0, None, math.nan])
    assert {k: got[k] for k in ("mean", "std", "n")} == {"mean": 2.0, "std": math.sqrt(2.0), "n": 2}
    assert math.isclose(got["ci95"], 12.706 * math.sqrt(2.0) / math.sqrt(2))
    assert st.mean_std([]) == {"mean": None, "std": None, "n": 0, "ci95": None}
    assert st.mean_std([5]) == {"mean": 5.0, "std": 0.0, "n": 1, "ci95": None}


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
    # smartfed crosses 1.5 between round 1 (2.0) and round 2 (1.4): 5/6 of the way, interpolated
    assert math.isclose(tt["smartfed"]["round"], 1 + 5 / 6)
    assert math.isclose(tt["smartfed"]["bytes"], 10 + 10 * 5 / 6)
    assert math.isclose(tt["smartfed"]["wall_s"], 2.0 + 2.0 * 5 / 6)
    assert math.isclose(tt["smartfed"]["ratio_rounds"], 4 / (1 + 5 / 6))
    assert math.isclose(tt["smartfed"]["ratio_bytes"], 4000 / (10 + 10 * 5 / 6))
    assert not tt["x"]["reached"] and tt["x"]["ratio_rounds"] is None
    acc = st.to_target({"fedit": fedit, "smartfed": fast}, "fedit", "eval_accuracy")
    assert acc["smartfed"]["round"] == 1 and acc["fedit"]["round"] == 4
    assert st.to_target({"smartfed": fast}, "fedit", "eval_loss") == {}
    d = st.deltas({"fedit": fedit, "smartfed": fast}, "eval_accuracy", "fedit")
    assert d["fedit"] == 0 and math.isclose(d["smartfed"], 0.2)


@settings(deadline=None)  # a loaded 2-core machine is slow, not wrong
@given(hst.lists(hst.floats(0.01, 10), min_size=1, max_size=8))
def test_reference_reaches_its_own_target_by_its_last_round(losses: list[float]) -> None:
    ref = {"per_round": st.per_round([_rows(losses, [None] * len(losses))], "accuracy")}
    tt = st.to_target({"fedit": ref}, "fedit", "eval_loss")["fedit"]
    assert tt["reached"] and 1 <= tt["round"] <= len(losses)
    first = math.ceil(tt["round"] - 1e-9)  # the first round at or below the target
    assert losses[first - 1] <= losses[-1]
    assert all(x > losses[-1] for x in losses[: first - 1])
    assert first - 1 <= tt["round"] <= first
    assert tt["ratio_rounds"] == 1.0


def test_t_interval_and_paired_differences() -> None:
    assert st.t975(2) == 4.303 and 1.96 < st.t975(100) < 1.99
    ci = st.ci95([0.5, 0.6, 0.7])
    assert math.isclose(ci["mean"], 0.6) and math.isclose(
        ci["hi"] - 0.6, 4.303 * 0.1 / math.sqrt(3)
    )
    assert st.ci95([0.5])["lo"] is None
    a = {"0": 0.80, "1": 0.70, "2": 0.90}
    b = {"0": 0.60, "1": 0.50, "2": 0.71, "9": 0.1}  # seed 9 has no partner: left out
    pc = st.paired_ci(a, b)
    assert pc["seeds"] == ["0", "1", "2"] and pc["n"] == 3
    assert math.isclose(pc["mean"], (0.2 + 0.2 + 0.19) / 3) and pc["lo"] > 0  # consistent gain
    unpaired = st.ci95(list(a.values()))  # the seed-to-seed spread both share is removed
    assert pc["hi"] - pc["lo"] < unpaired["hi"] - unpaired["lo"]
    assert st.paired_ci({"0": 1.0}, {"0": None})["n"] == 0


def test_choose_rate_best_val_then_loss_then_smaller() -> None:
    grid = [
        {"mult": 1 / 3, "val_tf_em": 0.5, "val_tf_loss": 0.3},
        {"mult": 1.0, "val_tf_em": 0.7, "val_tf_loss": 0.4},
        {"mult": 3.0, "val_tf_em": 0.7, "val_tf_loss": 0.2},
    ]
    assert st.choose_rate(grid) == 3.0
    grid[2]["val_tf_loss"] = 0.4
    assert st.choose_rate(grid) == 1.0
    grid[0]["val_tf_em"] = None  # a sweep run still missing: no choice yet
    assert st.choose_rate(grid) is None and st.choose_rate([]) is None


def test_no_accuracy_target_when_reference_scores_zero() -> None:
    zero = {"per_round": st.per_round([_rows([2.0, 1.0], [0.0, 0.0])], "accuracy")}
    some = {"per_round": st.per_round([_rows([2.0, 1.0], [0.1, 0.2])], "accuracy")}
    assert st.to_target({"fedit": zero, "smartfed": some}, "fedit", "eval_accuracy") == {}
    assert st.to_target({"fedit": zero, "smartfed": some}, "fedit", "eval_loss")["smartfed"][
        "reached"
    ]


def test_splice_readme_replaces_only_the_marked_block() -> None:
    from smartfed_bench.render import splice_readme

    readme = "intro\n<!-- results:begin -->\nold\n<!-- results:end -->\nreading\n"
    gen = "# `cpu-mini` bench\n\n| a |\n\n![curves](cpu-mini_x_curves.png)\n"
    out = splice_readme(readme, gen, "benchmarks/results")
    assert out.startswith("intro\n<!-- results:begin -->\n### `cpu-mini` bench")
    assert "![curves](benchmarks/results/cpu-mini_x_curves.png)" in out and "old" not in out
    assert out.endswith("<!-- results:end -->\nreading\n")
    with pytest.raises(ValueError, match="results:begin"):
        splice_readme("no markers", gen, ".")
