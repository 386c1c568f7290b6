"""A run directory (docs/ARCHITECTURE.md, Run directory) and its crash-safe checkpoints.

Layout: ``config.json``, ``meta.json``, ``metrics.jsonl`` (one line per round), ``summary.json``,
``checkpoint/latest.json`` -> ``checkpoint/rNNNN/`` holding ``routers.safetensors`` (+ adapter
hashes in its metadata), ``eeqa.json`` (the EEQA state) and ``state.json`` (round, quotas, totals).

Crash safety: a round's metrics line is appended *before* its checkpoint; a checkpoint directory
is complete before ``latest.json`` (atomic rename) points at it. On resume, metrics lines after the
checkpointed round are dropped (they are re-run bit-identically), so every round appears once.

Damage (docs/security.md, "Run directories"): the previous checkpoint is kept next to the latest;
on resume a checkpoint that does not load (truncated safetensors, wrong types in ``state.json``,
NaN/Inf routers, a pointer outside ``checkpoint/``) is skipped for the newest one that does, a
torn last metrics line is dropped, stray ``.tmp`` files are removed, and a run whose every
checkpoint is damaged fails with one line. A lock (``flock`` on the run folder) refuses a second
process on the same ``--output_dir``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from smartfed.config import RunConfig
from smartfed.errors import CheckpointError, SmartFedError
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
KEEP_CHECKPOINTS = 2
"""Checkpoints kept on disk: the latest and the one before it (the fallback if it is damaged)."""
_CKPT_NAME = re.compile(r"r\d{4,}")
_LOCKS: dict[Path, int] = {}
"""Run folder -> the locked file descriptor this process holds (held until the process ends)."""
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


def with_run_dtype(cfg: RunConfig) -> RunConfig:
    """``cfg`` with a concrete ``model.dtype``, decided once per run [D].

    ``auto`` becomes, on ``--resume`` of a run that exists, the dtype its ``config.json``
    records: never re-resolved, so a run continued on another machine keeps its numerics (pass
    that dtype explicitly to say so; another explicit dtype is refused by :meth:`RunDir.open`).
    Otherwise :func:`smartfed.model.dtype.resolve_dtype` picks it for ``model.device`` here. A
    concrete dtype is returned unchanged. ``smartfed train`` and the ``flwr run`` ServerApp call
    this before anything is keyed on the dtype (pool hashes, the bundle cache, ``config.json``).

    Raises:
        DeviceError: ``auto`` with a ``model.device`` that is not available here.
    """
    if cfg.model.dtype != "auto":
        return cfg
    from smartfed.model.dtype import resolve_model_config  # torch: only for auto

    recorded = RunDir(cfg.output_dir).recorded_dtype() if cfg.resume else None
    return dataclasses.replace(cfg, model=resolve_model_config(cfg.model, recorded=recorded))


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
        cfg = with_run_dtype(cfg)  # config.json records a concrete dtype (callers resolved it)
        run = cls.check(cfg)
        run.path.mkdir(parents=True, exist_ok=True)
        run.lock()
        exists = any(run.path.iterdir())
        if exists and not cfg.resume:  # another process filled it since check()
            cls.check(cfg)
        if cfg.resume and exists:
            run._check_same_run(cfg)
            run.remove_stray_tmp()
            ckpt = run.load_checkpoint()
            run._drop_metrics_after(ckpt.round if ckpt else 0)
            atomic_write_text(run.path / CONFIG_FILE, cfg.to_json() + "\n")
            return run, ckpt
        atomic_write_text(run.path / CONFIG_FILE, cfg.to_json() + "\n")
        atomic_write_json(run.path / META_FILE, meta)
        return run, None

    def lock(self) -> None:
        """Hold an exclusive ``flock`` on the run folder until this process ends.

        The kernel drops the lock when the process dies (also on ``kill -9``), so a crashed run
        never blocks its own ``--resume``. Taking it again in the same process is a no-op.

        Raises:
            CheckpointError: another process holds the lock (a run is writing this folder).
        """
        key = self.path.resolve()
        if key in _LOCKS:
            held, now = os.fstat(_LOCKS[key]), os.stat(key)
            if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                return
            os.close(_LOCKS.pop(key))  # the folder was deleted and made anew
        try:
            fd = os.open(key, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as err:
            raise CheckpointError(
                f"--output_dir {self.path}: cannot open ({err.strerror}); choose another folder"
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            raise CheckpointError(
                f"--output_dir {self.path} is in use by another smartfed process; wait for it to "
                "finish (or stop it) or choose another --output_dir"
            ) from err
        _LOCKS[key] = fd

    def unlock(self) -> None:
        """Release :meth:`lock` (no-op when this process does not hold it)."""
        fd = _LOCKS.pop(self.path.resolve(), None)
        if fd is not None:
            os.close(fd)

    def remove_stray_tmp(self) -> list[Path]:
        """Delete the ``.*.tmp`` files an interrupted atomic write left behind; return them."""
        stray = [p for p in self.path.rglob(".*.tmp") if p.is_file()]
        for p in stray:
            p.unlink(missing_ok=True)
        if stray:
            log.info("resume: removed %d unfinished temporary files", len(stray))
        return stray

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

    def recorded_dtype(self) -> str | None:
        """The ``model.dtype`` this run's ``config.json`` records, else ``None`` (no file, an
        unreadable one: resuming it fails later with its own message)."""
        try:
            return RunConfig.load_json(self.path / CONFIG_FILE).model.dtype
        except (SmartFedError, TypeError, ValueError, KeyError):
            return None

    def _check_same_run(self, cfg: RunConfig) -> None:
        try:
            old = RunConfig.load_json(self.path / CONFIG_FILE).to_flat()
        except Exception as err:  # any unreadable config means this is not a SmartFed run dir
            raise CheckpointError(
                f"{self.path}/{CONFIG_FILE} unreadable ({err}); cannot resume"
            ) from err
        new = cfg.to_flat()
        if old.get("model.dtype") == "auto":  # a hand-written config: the resumed run decided it
            old["model.dtype"] = new["model.dtype"]
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
        """All metrics lines; a torn last line (a crash while appending) is left out.

        Raises:
            CheckpointError: the file is not UTF-8 or a line other than the last is not a JSON
                object.
        """
        p = self.path / METRICS_FILE
        if not p.is_file():
            return []
        try:
            lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except UnicodeDecodeError as err:
            raise CheckpointError(
                f"{p}: not UTF-8 text ({err.reason}); the run is damaged"
            ) from err
        rows: list[dict[str, Any]] = []
        for i, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("round"), int):
                    raise ValueError("not a round's metrics object")
            except ValueError as err:
                if i == len(lines):
                    log.warning("%s: ignoring a torn last line (%s)", p, err)
                    break
                raise CheckpointError(
                    f"{p}:{i}: damaged metrics line ({err}); restore the file or start a new "
                    "--output_dir"
                ) from err
            rows.append(row)
        return rows

    def _drop_metrics_after(self, last_round: int) -> None:
        """Keep the metrics lines up to ``last_round``; also rewrites a file with a torn line."""
        rows = self.metrics()
        keep = [r for r in rows if int(r.get("round", 0)) <= last_round]
        p = self.path / METRICS_FILE
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep)
        if p.is_file() and p.read_text(encoding="utf-8") != text:
            log.info(
                "resume: keeping %d metrics lines (rounds <= %d) of %d",
                len(keep),
                last_round,
                len(rows),
            )
            atomic_write_text(p, text)

    def save_checkpoint(self, ckpt: Checkpoint) -> Path:
        """Write ``checkpoint/rNNNN/`` completely, then point ``latest.json`` at it."""
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
        for old in self._checkpoint_dirs()[KEEP_CHECKPOINTS:]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def _checkpoint_dirs(self) -> list[Path]:
        """``checkpoint/rNNNN`` folders, newest round first."""
        root = self.path / CKPT_DIR
        if not root.is_dir():
            return []
        found = [p for p in root.iterdir() if p.is_dir() and _CKPT_NAME.fullmatch(p.name)]
        return sorted(found, key=lambda p: int(p.name[1:]), reverse=True)

    def load_checkpoint(self) -> Checkpoint | None:
        """Read the newest checkpoint that loads and is sound (``None`` when no round completed).

        ``latest.json`` names the newest; when it or its checkpoint is damaged, older
        ``checkpoint/rNNNN`` folders are tried, newest first (a warning names what was skipped).

        Raises:
            CheckpointError: checkpoints exist but none of them loads.
        """
        root = self.path / CKPT_DIR
        latest = root / LATEST_FILE
        candidates = self._checkpoint_dirs()
        if not latest.is_file() and not candidates:
            return None
        problems: list[str] = []
        try:
            first = self._pointed_dir(latest)
            candidates = [first] + [c for c in candidates if c != first]
        except CheckpointError as err:
            problems.append(str(err))
            log.warning("%s", err)
        for target in candidates:
            try:
                ckpt = read_checkpoint(target)
            except CheckpointError as err:
                problems.append(str(err))
                log.warning("resume: skipping a damaged checkpoint: %s", err)
                continue
            if problems:
                log.warning("resume: continuing from %s (round %d)", target, ckpt.round)
            return ckpt
        raise CheckpointError(
            f"{root}: no usable checkpoint ({problems[-1] if problems else 'none found'}); "
            "start a new --output_dir"
        )

    def _pointed_dir(self, latest: Path) -> Path:
        """The folder ``latest.json`` names (a plain ``rNNNN`` inside ``checkpoint/``)."""
        try:
            ptr = json.loads(latest.read_text(encoding="utf-8"))
            name = ptr["dir"]
        except (OSError, KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{latest}: unreadable pointer ({err})") from err
        if not isinstance(name, str) or not _CKPT_NAME.fullmatch(name):
            raise CheckpointError(f"{latest}: dir={name!r} is not a checkpoint of this run")
        return latest.parent / name

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json`` atomically."""
        atomic_write_json(self.path / SUMMARY_FILE, summary)


def read_checkpoint(target: Path) -> Checkpoint:
    """Load and check one ``checkpoint/rNNNN`` folder.

    Raises:
        CheckpointError: a missing/corrupt file, wrong types in ``state.json``, a round that
            differs from the folder name, or NaN/Inf routers.
    """
    try:
        state = json.loads((target / STATE_FILE).read_text(encoding="utf-8"))
        routers = load_file(str(target / ROUTERS_FILE))
        eeqa_path = target / EEQA_FILE
        eeqa = json.loads(eeqa_path.read_text(encoding="utf-8")) if eeqa_path.is_file() else None
    except (OSError, ValueError, SafetensorError) as err:
        raise CheckpointError(f"{target}: unreadable ({err})") from err
    _check_state(target, state)
    if eeqa is not None and not isinstance(eeqa, dict):
        raise CheckpointError(f"{target}/{EEQA_FILE}: not a JSON object")
    bad = [k for k, v in routers.items() if not np.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{target}/{ROUTERS_FILE}: NaN/Inf in {bad[0]}")
    return Checkpoint(
        state["round"],
        dict(routers),
        eeqa,
        dict(state["quotas"]),
        dict(state.get("totals", {})),
        dict(state.get("adapters", {})),
    )


def _check_state(target: Path, state: Any) -> None:
    """Types of ``state.json``: round int, quotas {str: int >= 0}, totals {str: finite number}."""
    where = f"{target}/{STATE_FILE}"

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: not a JSON object")
    rnd = state.get("round")
    if not is_int(rnd) or rnd < 1 or target.name != f"r{rnd:04d}":
        raise CheckpointError(f"{where}: round={rnd!r} does not match the folder {target.name}")
    quotas = state.get("quotas")
    if not isinstance(quotas, dict) or not all(is_int(v) and v >= 0 for v in quotas.values()):
        raise CheckpointError(f"{where}: quotas must map matrix names to integers >= 0")
    totals = state.get("totals", {})
    if not isinstance(totals, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        for v in totals.values()
    ):
        raise CheckpointError(f"{where}: totals must map names to finite numbers")
    adapters = state.get("adapters", {})
    if not isinstance(adapters, dict) or not all(isinstance(v, str) for v in adapters.values()):
        raise CheckpointError(f"{where}: adapters must map names to sha256 strings")
