"""smartfed_bench: the CPU-scale experiment around SmartFed, kept apart from the library.

It holds the generated cpu-mini task suite (:mod:`smartfed_bench.cpu_mini`), the cached and the
shipped skill LoRAs it routes over (:mod:`smartfed_bench.pools`, :mod:`smartfed_bench.packaged`),
random-weight control pools (:mod:`smartfed_bench.synthetic`), the ``smartfed bench`` grids,
runner and report (:mod:`smartfed_bench.presets`, :mod:`smartfed_bench.bench`,
:mod:`smartfed_bench.report`) and the quickstart ``smartfed demo`` (:mod:`smartfed_bench.demo`).

It uses SmartFed only through its public API and plugs in through SmartFed's entry-point groups
(:mod:`smartfed.plugins`, registered in ``pyproject.toml``; callables in
:mod:`smartfed_bench.plugin`); SmartFed itself never imports it.
"""

from __future__ import annotations

__all__: list[str] = []
