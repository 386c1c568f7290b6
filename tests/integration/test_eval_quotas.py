"""The server evaluates a round with the quotas its routers were trained under (EEQA fix 1).

``ServerLoop.end_round`` runs after the strategy already moved to the next round's quotas; the
metrics row, the evaluation and ``checkpoint/quotas.json`` must use the trained ones, while the
resume checkpoint keeps the next ones. No Flower run: the real tiny bundle and strategy objects.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedkit import tiny_config, write_dataset

from smartfed.fed import wire
from smartfed.fed.accounting import RoundAccount
from smartfed.fed.cache import BundleSpec, get_bundle
from smartfed.fed.driver import ServerLoop
from smartfed.fed.strategy import RoundOutcome, SmartFedStrategy
from smartfed.io.rundir import RunDir
from smartfed.model.state import set_quotas
from smartfed.quota.schedule import EEQAState
from smartfed.train.local import evaluate_loss


def test_end_round_evaluates_and_logs_the_trained_quotas(
    tiny_model_dir: Path, tiny_pool: list[Path], tmp_path: Path
) -> None:
    # Arrange: round 1 trained with K = 1 everywhere; EEQA already moved to K = M_m - 1
    data = write_dataset(tmp_path / "data.jsonl")
    cfg = tiny_config(
        tiny_model_dir,
        tiny_pool,
        data,
        tmp_path / "run",
        num_rounds=1,
        track_energy=False,
        device="cpu",
    )
    bundle = get_bundle(BundleSpec.from_config(cfg))
    experts = bundle.experts_per_matrix
    trained = dict.fromkeys(experts, 1)
    following = {m: n - 1 for m, n in experts.items()}
    eeqa = EEQAState.create(experts, 4, total_budget=sum(following.values()))
    eeqa.quotas, eeqa.last_round = dict(following), 1
    strategy = SmartFedStrategy(cfg, {7: 0, 8: 1, 9: 2}, trained, eeqa)
    strategy.outcome = RoundOutcome(1, RoundAccount(), sampled=[0, 1], quotas=trained, ok=True)
    strategy.quotas = dict(following)
    run = RunDir(cfg.output_dir)
    run.path.mkdir(parents=True)
    loop = ServerLoop(cfg, run, bundle, strategy)
    arrays = wire.arrays_from_numpy(bundle.initial_state)
    # Act
    loop.end_round(1, arrays)
    # Assert: the row and the evaluation use the trained quotas, the next ones are logged apart
    (row,) = run.metrics()
    assert row["quotas"] == trained
    held, pad = bundle.heldout(), bundle.tokenizer.pad_token_id
    losses = {}
    for label, quotas in (("trained", trained), ("following", following)):
        set_quotas(bundle.model, quotas)
        losses[label] = evaluate_loss(bundle.model, held, cfg.eval.eval_batch_size, pad)
    assert losses["trained"] != losses["following"]  # the check below can tell them apart
    assert row["eval_loss"] == losses["trained"]
    assert row["next_quotas"] == following
    # the eval checkpoint pairs the routers with their quotas; resume continues with the next
    ckpt_dir = Path(cfg.output_dir) / "checkpoint"
    assert json.loads((ckpt_dir / "quotas.json").read_text()) == trained
    resume = run.load_checkpoint()
    assert resume is not None and resume.quotas == following
    assert resume.eeqa is not None and resume.eeqa["quotas"] == following
