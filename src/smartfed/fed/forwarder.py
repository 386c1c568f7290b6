"""The ClientApp's thin path: hand a message to this node's worker (no torch in this process).

Node config (``flower-supernode --node-config``) [D]:

- ``worker``: ``0`` trains inside the ClientApp process (reloads the model every message);
  otherwise (default) a per-node worker keeps it.
- ``worker-dir``: the private directory of this node's workers (default
  ``$XDG_RUNTIME_DIR/smartfed`` or ``/tmp/smartfed-<uid>``); SuperNodes sharing it share workers.
- ``worker-idle-s``: a worker exits after this many seconds without a message (default 900;
  0 = never).
- ``worker-owner``: a PID; the worker exits as soon as that process is gone (``deploy-local``).
- ``worker-threads``: torch threads of the worker (0 = torch's default).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import RecordDict

from smartfed.config import RunConfig
from smartfed.fed import worker_link as wl
from smartfed.fed.envelope import from_bytes, to_bytes
from smartfed.fed.worker_key import bundle_key, spec_of
from smartfed.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class NodeWorker:
    """How this node runs its worker (from the node config)."""

    dir: Path
    idle_s: float = wl.DEFAULT_IDLE_S
    owner: int = 0
    threads: int = 0

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> NodeWorker | None:
        """The node's worker settings; ``None`` when ``worker=0``."""
        if str(node_config.get(wl.NODE_WORKER, "1")).strip().lower() in ("0", "false", "off"):
            return None
        return cls(
            dir=Path(str(node_config.get(wl.NODE_WORKER_DIR, "") or wl.default_dir())),
            idle_s=float(node_config.get(wl.NODE_WORKER_IDLE_S, wl.DEFAULT_IDLE_S)),
            owner=int(node_config.get(wl.NODE_WORKER_OWNER, 0)),
            threads=int(node_config.get(wl.NODE_WORKER_THREADS, 0)),
        )


def forward_train(
    cfg: RunConfig,
    content: RecordDict,
    node_config: Mapping[str, Any],
    partition_id: int,
    own: str = "",
) -> RecordDict | None:
    """Run a train message on this node's worker, starting one if none serves this bundle.

    Returns:
        The reply records, or ``None`` when no worker can be used (``worker=0``, an unusable
        directory, or a worker that cannot start): the caller then trains in-process.

    Raises:
        WorkerError: the worker refused or failed the request, or died during it.
    """
    node = NodeWorker.from_node_config(node_config)
    if node is None:
        return None
    try:
        paths = wl.WorkerPaths(wl.private_dir(node.dir), bundle_key(spec_of(cfg, own)))
        job = {"run_config": cfg.to_flat(), "dataset": own}
        sock, spawn_s = wl.open_worker(
            paths,
            job,
            cfg.fed.round_timeout_s,
            owner=node.owner,
            threads=node.threads,
            idle_s=node.idle_s,
        )
    except (wl.WorkerError, OSError) as err:
        log.warning("no worker available (%s); training in the ClientApp process", err)
        return None
    with sock:
        header = {"op": "train", **job, "partition_id": int(partition_id)}
        _, body = wl.exchange(sock, paths, header, to_bytes(content), spawn_s)
    return from_bytes(body)
