"""Put a bench's generated Markdown (tables, ratios, plots) into README.md between the markers.

Usage: python benchmarks/update_readme.py [benchmarks/results/cpu-mini.md] [--readme README.md]

The text between ``<!-- results:begin -->`` and ``<!-- results:end -->`` is replaced by the Markdown
that ``smartfed bench`` wrote next to its JSON (image links rewritten relative to the README). The
hand-written reading of the numbers lives outside the markers.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from smartfed.files import atomic_write_text

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def splice(readme: str, generated: str, rel_dir: str) -> str:
    """Return ``readme`` with the block between the markers replaced by ``generated``.

    Raises:
        SystemExit: the markers are missing.
    """
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"README has no {BEGIN} ... {END} block")
    body = re.sub(r"!\[([^\]]*)\]\(([^)/]+\.png)\)", rf"![\1]({rel_dir}/\2)", generated)
    body = body.replace("\n# ", "\n### ", 1) if body.startswith("#") else body
    body = re.sub(r"^# ", "### ", body)
    head, _, rest = readme.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{body.strip()}\n{END}{tail}"


def main() -> None:
    """Rewrite the README's results block."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("markdown", nargs="?", default="benchmarks/results/cpu-mini.md", type=Path)
    p.add_argument("--readme", default="README.md", type=Path)
    args = p.parse_args()
    rel = os.path.relpath(args.markdown.parent, args.readme.parent)
    text = splice(args.readme.read_text(encoding="utf-8"), args.markdown.read_text("utf-8"), rel)
    atomic_write_text(args.readme, text)
    print(f"updated {args.readme}")


if __name__ == "__main__":
    main()
