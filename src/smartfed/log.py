"""Logging helpers: one logger namespace (``smartfed``), one format, configured only by the CLI."""

from __future__ import annotations

import logging

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def get_logger(name: str) -> logging.Logger:
    """Return the logger for a SmartFed module (``name`` is usually ``__name__``)."""
    return logging.getLogger(name)


def configure_logging(level: int | str = logging.INFO) -> None:
    """Attach one stderr handler to the ``smartfed`` logger; called from ``main()`` only."""
    root = logging.getLogger("smartfed")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
