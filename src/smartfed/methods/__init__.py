"""Federated fine-tuning methods: what is prepared on the base model and what travels.

Every method is one line in :data:`METHODS` (name -> ``module:Class``), imported lazily.
"""

from __future__ import annotations

from smartfed.methods.base import (
    METHODS,
    AuxiliaryLoss,
    LocalUpdate,
    Method,
    ServerSearch,
    get_method,
)

__all__ = ["METHODS", "AuxiliaryLoss", "LocalUpdate", "Method", "ServerSearch", "get_method"]
