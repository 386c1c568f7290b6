"""Server side of a run, called by the ServerApp: hello, strategy, per-round logs/checkpoints.

Transport stays in Flower (``Strategy.start`` drives the rounds); this module decides what happens
around them: which node holds which partition, where the run resumes, what each round logs.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from tqdm.auto import tqdm

from smartfed.config import RunConfig
from smartfed.data.tasks import get_task
from smartfed.errors import SmartFedError
from smartfed.eval.harness import generate_outputs, score_outputs, select_examples
from smartfed.eval.teacher_forced import round_metrics
from smartfed.fed import wire
from smartfed.fed.accounting import maybe_measure
from smartfed.fed.cache import Bundle, BundleSpec, get_bundle
from smartfed.fed.search import SearchStrategy
from smartfed.fed.strategy import DecodedDPClipping, SmartFedStrategy, make_aggregator
from smartfed.io.rundir import Checkpoint, RunDir
from smartfed.io.tracking import NullTracker, Tracker, open_tracker
from smartfed.log import get_logger
from smartfed.methods.base import ServerSearch
from smartfed.model.state import get_quotas, save_routers, set_quotas
from smartfed.quota.schedule import EEQAState
from smartfed.train.local import evaluate_loss

log = get_logger(__name__)
HELLO_POLL_S = 0.5
NODE_NOTE_S = 15.0
"""Seconds between "waiting for SuperNodes" log lines."""
SIMULATION_NODE_WAIT_S = 120.0
"""[D] A simulation's SuperNodes exist from the start: wait at most this long for them."""


class FederationError(SmartFedError):
    """Nodes missing or a round that cannot complete."""


def hello(
    grid: Grid, num_clients: int, timeout_s: float, node_wait_s: float | None = None
) -> dict[int, int]:
    """Wait for ``num_clients`` nodes, ask each for its partition id; return node -> partition.

    Args:
        grid: Flower's grid.
        num_clients: nodes (= data partitions) the run needs.
        timeout_s: the reply timeout of the partition query.
        node_wait_s: how long to wait for the nodes to connect (None = ``timeout_s``); a
            simulation's nodes exist from the start, so there it is short (no silent hour-long
            wait when the federation has another number of SuperNodes).

    Raises:
        FederationError: nodes missing after the wait, or partition ids not 0..N-1 exactly once.
    """
    wait = timeout_s if node_wait_s is None else node_wait_s
    start = time.monotonic()
    next_note = start + NODE_NOTE_S
    while len(nodes := sorted(grid.get_node_ids())) < num_clients:
        now = time.monotonic()
        if now - start > wait:
            have = max(len(nodes), 1)
            raise FederationError(
                f"the federation has {len(nodes)} SuperNodes after {wait:.0f} s but "
                f"fed.num_clients={num_clients}; run with --run-config "
                f'"fed.num_clients={have} fed.sample_clients={min(2, have)}" '
                f'or --federation-config "num-supernodes={num_clients}", or start more SuperNodes'
            )
        if now >= next_note:
            log.info("waiting for SuperNodes: %d of %d connected", len(nodes), num_clients)
            next_note = now + NODE_NOTE_S
        time.sleep(HELLO_POLL_S)
    msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    replies = list(grid.send_and_receive(msgs, timeout=timeout_s))
    mapping = {
        m.metadata.src_node_id: wire.unpack_hello(m.content) for m in replies if not m.has_error()
    }
    if sorted(mapping.values()) != list(range(num_clients)):
        raise FederationError(
            f"partition ids {sorted(mapping.values())[:8]} of {len(nodes)} SuperNodes != "
            f"0..{num_clients - 1} (fed.num_clients={num_clients}); give every SuperNode a "
            "distinct partition-id < num-partitions, or set fed.num_clients to the number of "
            "SuperNodes"
        )
    return mapping


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (0 = every core this process may use), then
    restore the process's setting (``eval.eval_threads``)."""
    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    want = n or cores
    torch.set_num_threads(max(1, int(want or 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class ServerLoop:
    """Per-round bookkeeping after aggregation: evaluate, log one metrics line, checkpoint."""

    cfg: RunConfig
    run: RunDir
    bundle: Bundle
    strategy: SmartFedStrategy
    totals: dict[str, float] = field(default_factory=dict)
    bar: Any = None
    tracker: Tracker = field(default_factory=NullTracker)
    _server_kwh: list[float] = field(default_factory=list)
    _tf_rows: dict[str, Any] = field(default_factory=dict)

    def end_round(self, flower_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's ``evaluate_fn``: called with round 0 (skipped) and after every round."""
        if flower_round == 0:
            return None
        out = self.strategy.outcome
        assert out is not None
        with (
            maybe_measure(self.bundle.meter, self._server_kwh),
            out.account.phase("eval_s"),
            cpu_threads(self.cfg.eval.eval_threads),
        ):
            state = wire.state_from_arrays(arrays)
            self.bundle.method.load_trainable_state(self.bundle.model, state)
            # the quotas this round's routers were trained under; strategy.quotas is next round's
            set_quotas(self.bundle.model, out.quotas)
            held = self.bundle.heldout()
            eval_loss = (
                evaluate_loss(
                    self.bundle.model,
                    held,
                    self.cfg.eval.eval_batch_size,
                    self.bundle.tokenizer.pad_token_id,
                )
                if held
                else None
            )
            task_metrics = self._task_metrics(out.round)
            task_metrics.update(self._tf_metrics(out.round))
        row = self._row(out, eval_loss)
        row.update(task_metrics)
        self.run.append_metrics(row)
        self.tracker.log_round(row)
        with out.account.phase("checkpoint_s"):
            self._checkpoint(out.round, {k: v.numpy() for k, v in state.items()}, out.quotas)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=row["train_loss"], eval_loss=eval_loss)
        return MetricRecord({"eval_loss": eval_loss}) if eval_loss is not None else None

    def _row(self, out: Any, eval_loss: float | None) -> dict[str, Any]:
        acc = out.account
        client_kwh = math.fsum(u.energy_kwh for u in out.updates)
        server_kwh = self._server_kwh[-1] if self._server_kwh else 0.0
        n = sum(u.num_examples for u in out.updates)
        row: dict[str, Any] = {
            "round": out.round,
            "clients": [u.partition_id for u in out.updates],
            "sampled": out.sampled,
            "failures": out.failures,
            "rejected": {str(k): v for k, v in out.rejected.items()},
            "train_loss": (
                math.fsum(u.num_examples * u.train_loss for u in out.updates) / n if n else None
            ),
            "num_examples": n,
            "eval_loss": eval_loss,
            "bytes_up": acc.bytes_up,
            "bytes_down": acc.bytes_down,
            "payload_up": acc.payload_up,
            "payload_down": acc.payload_down,
            "wall_s": round(acc.wall_s(), 4),
            "phases": {k: round(v, 4) for k, v in acc.phases.items()},
            "client_train_s": [round(u.train_s, 4) for u in out.updates],
            "client_load_s": [round(u.load_s, 4) for u in out.updates],
            "energy_kwh_clients": client_kwh,
            "energy_kwh_server": server_kwh,
            "quotas": out.quotas,
        }
        if self.strategy.eeqa is not None:  # EEQA's decision for the next round, logged apart
            row["next_quotas"] = dict(self.strategy.quotas)
        steps = {str(u.partition_id): u.step_losses for u in out.updates if u.step_losses}
        if steps:  # only with train.report_to: the trackers' per-step scalars
            row["client_step_losses"] = steps
        usage = round_usage([u.usage for u in out.updates])
        if usage:
            row["usage"] = usage
        for key, value in (
            ("bytes_total", acc.bytes_up + acc.bytes_down),
            ("wall_s", row["wall_s"]),
            ("energy_kwh", client_kwh + server_kwh),
        ):
            self.totals[key] = self.totals.get(key, 0.0) + value
        self.totals["rounds"] = out.round
        return row

    def _checkpoint(self, rnd: int, routers: dict[str, Any], trained: dict[str, int]) -> None:
        """Resume state (``checkpoint/rNNNN``, next round's quotas), then eval's
        ``checkpoint/routers.safetensors`` with the quotas ``trained`` those routers were trained
        under."""
        eeqa = self.strategy.eeqa.to_dict() if self.strategy.eeqa else None
        target = self.run.save_checkpoint(
            Checkpoint(
                rnd,
                routers,
                eeqa,
                dict(self.strategy.quotas),
                dict(self.totals),
                self.bundle.pool.fingerprint(),
            )
        )
        save_routers(target.parent, self.bundle.model, self.bundle.pool, trained)

    def _tf_metrics(self, rnd: int) -> dict[str, Any]:
        """Teacher-forced EM / loss on eval rows (``tf_eval_every``) and val rows (last round)."""
        name = self.cfg.eval.eval_task or self.cfg.data.task
        if not name or not (self.cfg.eval.tf_eval_every or self.cfg.eval.val_examples):
            return {}
        return round_metrics(
            self.bundle.model,
            self.bundle.tokenizer,
            self.cfg.eval,
            name,
            self.cfg.data.data_dir or None,
            final=rnd == self.cfg.fed.num_rounds,
            rnd=rnd,
            cache=self._tf_rows,
        )

    def _task_metrics(self, rnd: int) -> dict[str, Any]:
        """Task accuracy of the global model every ``eval_every`` rounds and after the last one."""
        name = self.cfg.eval.eval_task or self.cfg.data.task
        every = self.cfg.eval.eval_every
        due = rnd == self.cfg.fed.num_rounds or (every > 0 and rnd % every == 0)
        if not name or not due:
            return {}

        task = get_task(name)
        if task.metric == "none":
            return {}
        examples = select_examples(task, self.cfg.data.data_dir or None, self.cfg.eval.eval_limit)
        outputs = generate_outputs(
            task,
            self.bundle.model,
            self.bundle.tokenizer,
            examples,
            batch_size=self.cfg.eval.eval_batch_size,
            max_new_tokens=self.cfg.eval.max_new_tokens,
        )
        records = score_outputs(task, examples, outputs)
        value = math.fsum(float(r["correct"]) for r in records) / max(len(records), 1)
        return {f"eval_{task.metric}": value, "eval_task": task.name, "eval_n": len(records)}


def round_usage(per_client: list[dict[str, list[int]]]) -> dict[str, list[int]]:
    """Sum the clients' expert selections per matrix and source adapter (the ``usage`` log)."""
    total: dict[str, list[int]] = {}
    for usage in per_client:
        for matrix, counts in usage.items():
            acc = total.setdefault(matrix, [0] * len(counts))
            for i, c in enumerate(counts):
                acc[i] += int(c)
    return dict(sorted(total.items()))


def run_server(grid: Grid, cfg: RunConfig) -> dict[str, Any]:
    """Run (or resume) the federated job on ``grid``; return the summary.

    The run directory must have been opened by the caller (``RunDir.open``) or be resumable.

    Raises:
        SmartFedError: run-dir, model, pool, data or federation problems.
    """
    run = RunDir(cfg.output_dir)
    ckpt = run.load_checkpoint()
    done = ckpt.round if ckpt else 0
    bundle = get_bundle(BundleSpec.from_config(cfg))
    wait = SIMULATION_NODE_WAIT_S if cfg.fed.engine == "simulation" else None
    nodes = hello(grid, cfg.fed.num_clients, cfg.fed.round_timeout_s, wait)
    strategy = _make_strategy(cfg, bundle, ckpt, nodes)
    loop = ServerLoop(cfg, run, bundle, strategy, dict(ckpt.totals) if ckpt else {})
    routers = ckpt.routers if ckpt else bundle.initial_state
    remaining = cfg.fed.num_rounds - done
    if remaining > 0:
        loop.tracker = open_tracker(cfg.train.report_to, run.path, cfg.to_flat())
        loop.bar = tqdm(total=cfg.fed.num_rounds, initial=done, desc="rounds", mininterval=1.0)
        try:
            _start(strategy, cfg, grid, wire.arrays_from_numpy(routers), remaining, loop)
        finally:
            loop.bar.close()
            loop.tracker.close()
    summary = _summary(cfg, run, loop.totals)
    run.write_summary(summary)
    return summary


def _start(
    strategy: Any, cfg: RunConfig, grid: Grid, arrays: ArrayRecord, rounds: int, loop: ServerLoop
) -> None:
    runner = strategy
    if cfg.fed.dp_noise_multiplier > 0:  # clips the decoded updates under every wire encoding
        runner = DecodedDPClipping(
            strategy,
            noise_multiplier=cfg.fed.dp_noise_multiplier,
            clipping_norm=cfg.fed.dp_clipping_norm,
            num_sampled_clients=cfg.fed.sample_clients,
        )
    runner.start(
        grid, arrays, num_rounds=rounds, timeout=cfg.fed.round_timeout_s, evaluate_fn=loop.end_round
    )


def _make_strategy(
    cfg: RunConfig, bundle: Bundle, ckpt: Checkpoint | None, nodes: dict[int, int]
) -> SmartFedStrategy:
    if isinstance(bundle.method, ServerSearch):  # the server runs the method's search (lorahub)
        if cfg.fed.dp_noise_multiplier > 0:
            raise FederationError(f"--method {cfg.train.method} sends losses, not model updates: "
                                  "server-side DP does not apply; set --dp_noise_multiplier 0")
        if cfg.fed.wire_dtype != "float32":
            raise FederationError(f"--method {cfg.train.method} sends candidates and losses, not "
                                  "its trainable state: set --wire_dtype float32")
        return SearchStrategy(bundle.method, cfg, nodes, round_offset=ckpt.round if ckpt else 0)
    eeqa = None
    if bundle.method.uses_eeqa and cfg.quota.enable_eeqa:
        eeqa = (
            EEQAState.from_dict(ckpt.eeqa)
            if ckpt and ckpt.eeqa
            else EEQAState.from_config(
                cfg.quota, cfg.router.topk_experts, bundle.experts_per_matrix
            )
        )
    quotas = ckpt.quotas if ckpt else get_quotas(bundle.model)
    n_params = sum(v.numel() for v in bundle.method.trainable_state(bundle.model).values())
    bound = cfg.fed.max_update_norm or (
        10 * cfg.train.learning_rate * cfg.train.local_steps * math.sqrt(n_params)
    )
    # simulation clients train exactly the server's split; deployment nodes may hold own files
    sizes = (
        {p: len(rows) for p, rows in enumerate(bundle.split.partitions)}
        if cfg.fed.engine == "simulation"
        else None
    )
    return SmartFedStrategy(
        cfg,
        nodes,
        quotas,
        eeqa,
        round_offset=ckpt.round if ckpt else 0,
        max_update_norm=bound,
        aggregate=make_aggregator(cfg.fed.aggregation, cfg.fed.trim_fraction),
        partition_sizes=sizes,
        experts_per_matrix=dict(bundle.experts_per_matrix),
    )


def _summary(cfg: RunConfig, run: RunDir, totals: dict[str, float]) -> dict[str, Any]:
    rows = run.metrics()
    last = rows[-1] if rows else {}
    return {
        "rounds": len(rows),
        "num_rounds": cfg.fed.num_rounds,
        "bytes_total": int(sum(r["bytes_up"] + r["bytes_down"] for r in rows)),
        "bytes_up": int(sum(r["bytes_up"] for r in rows)),
        "bytes_down": int(sum(r["bytes_down"] for r in rows)),
        "wall_s": round(sum(r["wall_s"] for r in rows), 3),
        "energy_kwh": sum(r["energy_kwh_clients"] + r["energy_kwh_server"] for r in rows),
        "final_train_loss": last.get("train_loss"),
        "final_eval_loss": last.get("eval_loss"),
        "final_quotas": last.get("quotas"),
        **final_task_metrics(rows),
        "method": cfg.train.method,
        "dp": {
            "noise_multiplier": cfg.fed.dp_noise_multiplier,
            "clipping_norm": cfg.fed.dp_clipping_norm,
        }
        if cfg.fed.dp_noise_multiplier
        else None,
    }


def final_task_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``final_<metric>`` (e.g. ``final_execution_accuracy``), ``final_eval_n`` and ``eval_task``
    from the last round that measured task accuracy; empty when none did."""
    for row in reversed(rows):
        found = {
            f"final_{k.removeprefix('eval_')}": v
            for k, v in row.items()
            if k.startswith("eval_") and k not in ("eval_loss", "eval_n", "eval_task")
        }
        if found:
            return {**found, "final_eval_n": row.get("eval_n"), "eval_task": row.get("eval_task")}
    return {}
