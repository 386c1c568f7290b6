"""Put a bench's generated Markdown (tables, ratios, plots) into README.md between the markers.

Usage: python benchmarks/update_readme.py [MARKDOWN] [--readme README.md]

MARKDOWN defaults to the ``v2`` bench's ``benchmarks/results/cpu-mini-v2.md`` when it exists, else
the ``quick`` bench's ``benchmarks/results/cpu-mini.md``.

The text between ``<!-- results:begin -->`` and ``<!-- results:end -->`` is replaced by the Markdown
that ``smartfed bench`` wrote next to its JSON (image links rewritten relative to the README). The
hand-written reading of the numbers lives outside the markers.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from smartfed.files import atomic_write_text
from smartfed_bench.render import splice_readme


def main() -> None:
    """Rewrite the README's results block."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("markdown", nargs="?", default=None, type=Path)
    p.add_argument("--readme", default="README.md", type=Path)
    args = p.parse_args()
    if args.markdown is None:
        v2 = Path("benchmarks/results/cpu-mini-v2.md")
        args.markdown = v2 if v2.is_file() else Path("benchmarks/results/cpu-mini.md")
    rel = os.path.relpath(args.markdown.parent, args.readme.parent)
    text = splice_readme(
        args.readme.read_text(encoding="utf-8"), args.markdown.read_text("utf-8"), rel
    )
    atomic_write_text(args.readme, text)
    print(f"updated {args.readme}")


if __name__ == "__main__":
    main()
