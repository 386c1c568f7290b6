"""Every docs/*.md that the code or the README points a user to exists in the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = re.compile(r"(?<![\w/.])docs/[A-Za-z0-9_.-]+\.md")


def test_every_referenced_doc_exists() -> None:
    sources = [*ROOT.joinpath("src").rglob("*.py"), ROOT / "README.md", *ROOT.glob("docs/*.md")]
    missing = {
        f"{ref} (in {path.relative_to(ROOT)})"
        for path in sources
        for ref in DOC.findall(path.read_text(encoding="utf-8"))
        if not (ROOT / ref).is_file()
    }
    assert not missing, sorted(missing)
