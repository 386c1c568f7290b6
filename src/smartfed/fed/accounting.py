"""Accounting of a round: serialized bytes each way, wall-clock per phase, energy (CodeCarbon).

Bytes are the protobuf size of every ``Message`` as Flower serializes it
(``flwr.common.serde.message_to_proto(msg).ByteSize()``): metadata + records, for every
instruction sent (down) and every reply received (up, error replies included). The metadata holds
random 64-bit node ids (varints), so totals vary by a few bytes between runs; ``payload_*`` counts
the records alone (``recorddict_to_proto(content).ByteSize()``) and is exactly reproducible.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from smartfed.log import get_logger

log = get_logger(__name__)


@dataclass
class RoundAccount:
    """Counters of one round, filled by the strategy.

    Attributes:
        bytes_down: serialized bytes of instructions sent.
        bytes_up: serialized bytes of replies received.
        payload_down: the records part of ``bytes_down`` (without message metadata).
        payload_up: the records part of ``bytes_up``.
        phases: phase name -> seconds.
        started: ``time.perf_counter()`` at the start of the round.
    """

    bytes_down: int = 0
    bytes_up: int = 0
    payload_down: int = 0
    payload_up: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def add_phase(self, name: str, seconds: float) -> None:
        """Add ``seconds`` to phase ``name``."""
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the body as phase ``name``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add_phase(name, time.perf_counter() - t0)

    def wall_s(self) -> float:
        """Seconds since the round started."""
        return time.perf_counter() - self.started


class EnergyMeter:
    """CodeCarbon's offline tracker, created once per process; one task per measured block.

    Offline (no network), nothing written to disk (``save_to_file=False``), log level error. The
    first measurement pays CodeCarbon's hardware probing (about 2 s); later ones cost ~0.4 s.

    Args:
        country_iso_code: grid for the carbon intensity (energy in kWh does not depend on it).
    """

    def __init__(self, country_iso_code: str) -> None:
        from codecarbon import OfflineEmissionsTracker

        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        self._tracker = OfflineEmissionsTracker(
            country_iso_code=country_iso_code,
            save_to_file=False,
            save_to_api=False,
            log_level="error",
            allow_multiple_runs=True,
            measure_power_secs=15,
        )
        self._count = 0

    @contextmanager
    def measure(self, out: list[float]) -> Iterator[None]:
        """Measure the body; append its energy in kWh to ``out``."""
        self._count += 1
        self._tracker.start_task(f"block-{self._count}")
        try:
            yield
        finally:
            data = self._tracker.stop_task()
            out.append(float(getattr(data, "energy_consumed", 0.0) or 0.0))


@contextmanager
def maybe_measure(meter: EnergyMeter | None, out: list[float]) -> Iterator[None]:
    """``meter.measure(out)`` or, without a meter, append 0.0."""
    if meter is None:
        out.append(0.0)
        yield
        return
    with meter.measure(out):
        yield
