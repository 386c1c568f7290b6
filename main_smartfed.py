"""``python main_smartfed.py ...`` = ``smartfed train ...`` (the upstream README's entry point).

Run with any Python: when ``smartfed`` is not importable (e.g. the system ``python3``) and
``make install`` created ``.venv`` next to this file, the script re-runs itself with that venv.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

try:
    from smartfed.cli.main import main
except ModuleNotFoundError:
    venv = Path(__file__).resolve().parent / ".venv"
    venv_python = venv / "bin" / "python"
    if venv_python.is_file() and Path(sys.prefix).resolve() != venv.resolve():
        os.execv(str(venv_python), [str(venv_python), *sys.argv])
    sys.exit("smartfed: error: smartfed is not installed; run `make install` first")

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
