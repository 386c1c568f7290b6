"""An ordered pool of LoRA adapters: which matrices they adapt and how many experts each gets."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from smartfed.errors import ConfigError, PoolCompatibilityError
from smartfed.log import get_logger
from smartfed.pool.adapter import LoraAdapter, LoraModule
from smartfed.pool.registry import locate

log = get_logger(__name__)

# Within one transformer block, the order in which Llama/Qwen/Mistral modules run.
_BLOCK_ORDER = {
    "self_attn": 0, "attn": 0, "attention": 0, "mlp": 1, "feed_forward": 1,
    "q_proj": 0, "k_proj": 1, "v_proj": 2, "o_proj": 3,
    "gate_proj": 4, "up_proj": 5, "down_proj": 6,
}


def module_order_key(path: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key that puts module paths in model order (layer index numerically, q before k...)."""
    key: list[tuple[int, int, str]] = []
    for part in path.split("."):
        if re.fullmatch(r"\d+", part):
            key.append((0, int(part), ""))
        else:
            key.append((1, _BLOCK_ORDER.get(part, 99), part))
    return tuple(key)


@dataclass(frozen=True)
class LoraPool:
    """An ordered set of adapters; the position of an adapter is its ``adapter_index``."""

    adapters: tuple[LoraAdapter, ...]

    def __post_init__(self) -> None:
        if not self.adapters:
            raise ConfigError("lora_pool is empty: pass at least one adapter with --lora_pool A,B")
        names = [a.name for a in self.adapters]
        for name in names:
            if names.count(name) > 1:
                raise PoolCompatibilityError(
                    f"two pool adapters are named {name!r}; register them under distinct names "
                    "(`smartfed pool add NAME DIR`)"
                )
        hashes = [a.sha256 for a in self.adapters]
        for a in self.adapters:
            if hashes.count(a.sha256) > 1:
                log.warning("adapter %s appears more than once in the pool (same weights)", a.name)

    @property
    def names(self) -> list[str]:
        """Adapter names in pool order."""
        return [a.name for a in self.adapters]

    def matrices(self) -> list[str]:
        """Every module path adapted by at least one adapter, in model order."""
        found = {m for a in self.adapters for m in a.modules}
        return sorted(found, key=module_order_key)

    def modules_for(self, matrix: str) -> list[tuple[int, LoraModule]]:
        """``(adapter_index, module)`` for every adapter that adapts ``matrix``, in pool order."""
        return [(i, a.modules[matrix]) for i, a in enumerate(self.adapters) if matrix in a.modules]

    def experts_per_matrix(self) -> dict[str, int]:
        """M_m = sum of the ranks of the adapters that adapt matrix m (docs/method.md §1 [P])."""
        return {m: sum(mod.rank for _, mod in self.modules_for(m)) for m in self.matrices()}

    def check_topk(self, topk: int) -> int:
        """The one top-K rule (``train``, ``pool inspect``, every method): ``K_m = min(topk, M_m)``.

        A matrix with fewer experts than ``topk`` applies all of them [D]; a ``topk`` above every
        matrix's M_m is clamped to the largest M_m with a logged note (e.g. the paper's K = 32 over
        two r=8 LoRAs = 16 experts: dense routing).

        Returns:
            The largest K_m any matrix applies (``min(topk, max M_m)``).

        Raises:
            ConfigError: ``topk`` < 1.
        """
        if topk < 1:
            raise ConfigError(f"topk_experts={topk}: must be >= 1")
        largest = max(self.experts_per_matrix().values())
        if topk > largest:
            log.info(
                "topk_experts=%d > the %d experts per matrix of this pool (%s): every matrix "
                "applies all of its experts (K_m = M_m, no sparsity); set --topk_experts < %d "
                "for sparse routing",
                topk,
                largest,
                ", ".join(self.names),
                largest,
            )
        return min(topk, largest)

    def fingerprint(self) -> dict[str, str]:
        """Adapter name -> sha256 of its weights file (pool order)."""
        return {a.name: a.sha256 for a in self.adapters}


def resolve_pool(sources: Sequence[str], registry_path: str | Path = "") -> LoraPool:
    """Read every pool entry (registered name, local dir or hub id) into a :class:`LoraPool`.

    Args:
        sources: entries in pool order (e.g. ``PoolConfig.sources``).
        registry_path: registry JSON; empty = the default (see ``smartfed.pool.registry``).

    Raises:
        ConfigError: no entries.
        AdapterFileError / PoolCompatibilityError: an entry cannot be found or read.
    """
    if not sources:
        raise ConfigError("lora_pool is empty: pass at least one adapter with --lora_pool A,B")
    adapters = []
    for source in sources:
        name, local = locate(source, registry_path)
        adapters.append(LoraAdapter.from_peft_dir(local, name=name))
    return LoraPool(tuple(adapters))
