"""``python main_smartfed.py ...`` = ``smartfed train ...`` (the upstream README's entry point)."""

from __future__ import annotations

import sys

from smartfed.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
