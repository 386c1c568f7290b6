"""A run directory (SPEC.md §2.3) and its crash-safe checkpoints.

Layout: ``config.json``, ``meta.json``, ``metrics.jsonl`` (one line per round), ``summary.json``,
``checkpoint/latest.json`` -> ``checkpoint/rNNNN/`` holding ``routers.safetensors`` (+ adapter
hashes in its metadata), ``eeqa.json`` (the EEQA state) and ``state.json`` (round, quotas, totals).

Crash safety: a round's metrics line is appended *before* its checkpoint; a checkpoint directory
is complete before ``latest.json`` (atomic rename) points at it. On resume, metrics lines after the
checkpointed round are dropped (they are re-run bit-identically), so every round appears once.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smartfed.config import RunConfig
from smartfed.errors import CheckpointError
from smartfed.files import append_jsonl, atomic_write, atomic_write_json, atomic_write_text
from smartfed.log import get_logger

log = get_logger(__name__)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
META_FILE = "meta.json"
CKPT_DIR = "checkpoint"
LATEST_FILE = "latest.json"
ROUTERS_FILE = "routers.safetensors"
STATE_FILE = "state.json"
EEQA_FILE = "eeqa.json"
# Keys of a resumed run's config allowed to differ from the original run's.
RESUMABLE_CHANGES = frozenset(
    {
        "fed.num_rounds",
        "resume",
        "fed.engine",
        "fed.round_timeout_s",
        "eval.eval_every",
        "eval.eval_limit",
    }
)


@dataclass
class Checkpoint:
    """The server state after a complete round.

    Attributes:
        round: last complete round.
        routers: global trainable state (float32 numpy by key).
        eeqa: the EEQA state dict (``EEQAState.to_dict()``) or ``None``.
        quotas: matrix -> K_m for the next round.
        totals: running totals (bytes, energy, wall time) up to ``round``.
        adapters: adapter name -> sha256 of the pool.
    """

    round: int
    routers: dict[str, np.ndarray]
    eeqa: dict[str, Any] | None
    quotas: dict[str, int]
    totals: dict[str, float] = field(default_factory=dict)
    adapters: dict[str, str] = field(default_factory=dict)


class RunDir:
    """One run's output folder.

    Args:
        path: the ``--output_dir``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def open(cls, cfg: RunConfig, meta: dict[str, Any]) -> tuple[RunDir, Checkpoint | None]:
        """Start a new run (refusing a non-empty folder) or resume one (``cfg.resume``).

        Returns:
            The run dir and the checkpoint to continue from (``None`` = start at round 1).

        Raises:
            CheckpointError: non-empty folder without ``--resume``, or a resume whose config differs
                in more than the rounds/engine/eval schedule.
        """
        run = cls.check(cfg)
        exists = run.path.is_dir() and any(run.path.iterdir())
        if cfg.resume and exists:
            run._check_same_run(cfg)
            ckpt = run.load_checkpoint()
            run._drop_metrics_after(ckpt.round if ckpt else 0)
            atomic_write_text(run.path / CONFIG_FILE, cfg.to_json() + "\n")
            return run, ckpt
        run.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.path / CONFIG_FILE, cfg.to_json() + "\n")
        atomic_write_json(run.path / META_FILE, meta)
        return run, None

    @classmethod
    def check(cls, cfg: RunConfig) -> RunDir:
        """Refuse a non-empty ``output_dir`` without ``--resume`` (nothing is created or touched).

        Raises:
            CheckpointError: the folder holds files and ``cfg.resume`` is false.
        """
        run = cls(cfg.output_dir)
        if run.path.is_dir() and any(run.path.iterdir()) and not cfg.resume:
            raise CheckpointError(
                f"--output_dir {run.path} is not empty; pass --resume to continue that run or "
                "choose a new --output_dir"
            )
        return run

    def _check_same_run(self, cfg: RunConfig) -> None:
        try:
            old = RunConfig.load_json(self.path / CONFIG_FILE).to_flat()
        except Exception as err:  # any unreadable config means this is not a SmartFed run dir
            raise CheckpointError(
                f"{self.path}/{CONFIG_FILE} unreadable ({err}); cannot resume"
            ) from err
        new = cfg.to_flat()
        diff = sorted(k for k in new if old.get(k) != new[k] and k not in RESUMABLE_CHANGES)
        if diff:
            k = diff[0]
            raise CheckpointError(
                f"--resume: {k}={new[k]!r} but the run in {self.path} used {old.get(k)!r}; only "
                "--num_rounds and the eval schedule may change on resume"
            )

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append one round's metrics line (fsync'd)."""
        append_jsonl(self.path / METRICS_FILE, row)

    def metrics(self) -> list[dict[str, Any]]:
        """All metrics lines."""
        p = self.path / METRICS_FILE
        if not p.is_file():
            return []
        return [
            json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()
        ]

    def _drop_metrics_after(self, last_round: int) -> None:
        rows = self.metrics()
        keep = [r for r in rows if int(r.get("round", 0)) <= last_round]
        if len(keep) != len(rows):
            log.info(
                "resume: dropping %d metrics lines after round %d",
                len(rows) - len(keep),
                last_round,
            )
            text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep)
            atomic_write_text(self.path / METRICS_FILE, text)

    def save_checkpoint(self, ckpt: Checkpoint) -> Path:
        """Write ``checkpoint/rNNNN/`` completely, then point ``latest.json`` at it."""
        from safetensors.numpy import save_file

        root = self.path / CKPT_DIR
        target = root / f"r{ckpt.round:04d}"
        if target.exists():
            shutil.rmtree(target)
        meta = dict(ckpt.adapters)
        tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in ckpt.routers.items()}
        atomic_write(target / ROUTERS_FILE, lambda p: save_file(tensors, str(p), metadata=meta))
        if ckpt.eeqa is not None:
            atomic_write_json(target / EEQA_FILE, ckpt.eeqa)
        atomic_write_json(
            target / STATE_FILE,
            {
                "round": ckpt.round,
                "quotas": ckpt.quotas,
                "totals": ckpt.totals,
                "adapters": ckpt.adapters,
            },
        )
        atomic_write_json(root / LATEST_FILE, {"round": ckpt.round, "dir": target.name})
        for old in root.glob("r[0-9]*"):
            if old.is_dir() and old.name != target.name:
                shutil.rmtree(old, ignore_errors=True)
        return target

    def load_checkpoint(self) -> Checkpoint | None:
        """Read the checkpoint ``latest.json`` points at (``None`` when no round completed).

        Raises:
            CheckpointError: a pointer to a missing or corrupt checkpoint.
        """
        from safetensors.numpy import load_file

        latest = self.path / CKPT_DIR / LATEST_FILE
        if not latest.is_file():
            return None
        try:
            ptr = json.loads(latest.read_text(encoding="utf-8"))
            target = self.path / CKPT_DIR / ptr["dir"]
            state = json.loads((target / STATE_FILE).read_text(encoding="utf-8"))
            routers = load_file(str(target / ROUTERS_FILE))
            eeqa_path = target / EEQA_FILE
            eeqa = (
                json.loads(eeqa_path.read_text(encoding="utf-8")) if eeqa_path.is_file() else None
            )
        except (OSError, KeyError, ValueError) as err:
            raise CheckpointError(
                f"{latest}: checkpoint unreadable ({err}); cannot resume"
            ) from err
        return Checkpoint(
            int(state["round"]),
            dict(routers),
            eeqa,
            {k: int(v) for k, v in state["quotas"].items()},
            dict(state.get("totals", {})),
            dict(state.get("adapters", {})),
        )

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json`` atomically."""
        atomic_write_json(self.path / SUMMARY_FILE, summary)
