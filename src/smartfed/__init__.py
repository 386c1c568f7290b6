"""SmartFed: federated fine-tuning by routing over rank-wise experts of existing LoRAs.

Implements "Don't Reinvent the Wheel, Just Realign the Spokes" (arXiv 2512.00902, ICML 2026).
Importing the package has no side effects: no environment variables, seeds or warning filters
are set.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
