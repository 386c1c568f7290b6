"""Local dataset files: ``.json`` (an array), ``.jsonl`` (one object per line) or ``.parquet``.

The one row reader behind ``smartfed train --dataset``, ``smartfed pool train --dataset`` and
local files named as a task's data. Three row layouts are accepted (the ones PEFT / TRL / Alpaca
users already have):

* Alpaca fields: ``instruction`` (str), optional ``input`` (str), ``output`` (str).
* Chat: ``messages`` = ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``; the last
  assistant turn is the response, the user turns before it (joined by blank lines) the prompt.
* Prompt/response: ``prompt`` (str) and ``response`` (or TRL's ``completion``) (str).

An optional ``answer`` becomes the gold answer; every other scalar field (e.g. ``category``) is
kept in ``Example.meta`` so ``--partition_by`` can split on it. Malformed rows raise
:class:`~smartfed.errors.DataError` as ``file:line: what is wrong`` (for a ``.json`` array the line
where the element starts; for Parquet ``file:row N``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from smartfed.data.example import Example
from smartfed.errors import DataError

ROLES = ("system", "user", "assistant")
LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")
LAYOUTS = "Alpaca 'instruction'/'output', chat 'messages', or 'prompt'/'response'"
_LAYOUT_KEYS = {"messages", "instruction", "input", "output", "prompt", "response", "completion"}


def is_local_file(source: str) -> bool:
    """True when ``source`` names a local dataset file (by extension or because it exists)."""
    return source.endswith(LOCAL_SUFFIXES) or Path(source).expanduser().is_file()


def load_local_examples(path: str | Path) -> list[Example]:
    """Read a local dataset file into examples.

    Raises:
        DataError: missing file, unknown extension, invalid JSON or a malformed row (file:line).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{p} does not exist; pass a .json, .jsonl or .parquet file ({LAYOUTS})")
    if p.suffix not in LOCAL_SUFFIXES:
        raise DataError(
            f"{p}: unsupported extension {p.suffix!r}; use .json (array), .jsonl or .parquet"
        )
    readers = {".jsonl": _jsonl_rows, ".json": _json_rows, ".parquet": _parquet_rows}
    rows = readers[p.suffix](p)
    unit = "row " if p.suffix == ".parquet" else ""
    examples = [
        row_to_example(obj, p, line, i, where=f"{p}:{unit}{line}")
        for i, (line, obj) in enumerate(rows)
    ]
    if not examples:
        raise DataError(f"{p}: the file has no rows")
    return examples


def rows_to_examples(rows: list[Mapping[str, Any]], source: str) -> list[Example]:
    """Turn in-memory rows (e.g. a hub dataset) into examples; errors name ``source:row N``."""
    out = [
        row_to_example(dict(row), Path(source), i + 1, i, where=f"{source}:row {i + 1}")
        for i, row in enumerate(rows)
    ]
    if not out:
        raise DataError(f"{source}: the dataset has no rows")
    return out


def _jsonl_rows(p: Path) -> list[tuple[int, Any]]:
    rows = []
    with open(p, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append((lineno, json.loads(line)))
            except json.JSONDecodeError as err:
                raise DataError(f"{p}:{lineno}: invalid JSON ({err.msg})") from err
    return rows


def _json_rows(p: Path) -> list[tuple[int, Any]]:
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{p}:{err.lineno}: invalid JSON ({err.msg})") from err
    if not isinstance(data, list):
        raise DataError(f"{p}:1: expected a JSON array of rows, got {type(data).__name__}")
    decoder = json.JSONDecoder()
    rows, pos = [], text.index("[") + 1
    for obj in data:
        while text[pos] in " \t\r\n,":
            pos += 1
        rows.append((text.count("\n", 0, pos) + 1, obj))
        _, pos = decoder.raw_decode(text, pos)
    return rows


def _parquet_rows(p: Path) -> list[tuple[int, Any]]:
    import pyarrow.parquet as pq  # installed with `datasets`

    try:
        table = pq.read_table(p)
    except Exception as err:  # pyarrow raises several types for a broken file
        raise DataError(f"{p}: not a readable Parquet file ({err})") from err
    return [(i + 1, row) for i, row in enumerate(table.to_pylist())]


def row_to_example(
    obj: Any, path: Path, line: int, index: int, where: str | None = None
) -> Example:
    """Turn one row (Alpaca, chat or prompt/response layout) into an :class:`Example`.

    Raises:
        DataError: none of the layouts, or a field of the wrong type (file:line).
    """
    where = where or f"{path}:{line}"
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected an object, got {type(obj).__name__}")
    meta: dict[str, Any] = {
        k: v
        for k, v in obj.items()
        if k not in _LAYOUT_KEYS and isinstance(v, str | int | float) and not isinstance(v, bool)
    }
    meta.update(index=index, line=line)
    answer = obj.get("answer")
    if answer is not None and not isinstance(answer, str):
        answer = str(answer)
    if "messages" in obj:
        prompt, response = _chat(obj["messages"], where)
    elif "instruction" in obj:
        prompt, response = _alpaca(obj, where)
    elif "prompt" in obj:
        prompt, response = _prompt_response(obj, where)
    else:
        raise DataError(f"{where}: row has none of the layouts: {LAYOUTS}")
    return Example(prompt=prompt, response=response, answer=answer, meta=meta)


def _alpaca(obj: dict[str, Any], where: str) -> tuple[str, str]:
    for key in ("instruction", "output"):
        if not isinstance(obj.get(key), str):
            raise DataError(f"{where}: field {key!r} must be a string")
    inp = obj.get("input", "")
    if inp is None:
        inp = ""
    if not isinstance(inp, str):
        raise DataError(f"{where}: field 'input' must be a string")
    if not obj["instruction"].strip():
        raise DataError(f"{where}: field 'instruction' is empty")
    prompt = obj["instruction"].strip()
    if inp.strip():
        prompt = f"{prompt}\n\n{inp.strip()}"
    return prompt, obj["output"]


def _prompt_response(obj: dict[str, Any], where: str) -> tuple[str, str]:
    key = "response" if "response" in obj or "completion" not in obj else "completion"
    for k in ("prompt", key):
        if not isinstance(obj.get(k), str):
            raise DataError(f"{where}: field {k!r} must be a string")
    if not obj["prompt"].strip():
        raise DataError(f"{where}: field 'prompt' is empty")
    return obj["prompt"], obj[key]


def _chat(messages: Any, where: str) -> tuple[str, str]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    for i, m in enumerate(messages):
        if (
            not isinstance(m, dict)
            or m.get("role") not in ROLES
            or not isinstance(m.get("content"), str)
        ):
            raise DataError(
                f'{where}: messages[{i}] must be {{"role": one of {ROLES}, "content": str}}'
            )
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    if last < 0:
        raise DataError(f"{where}: 'messages' has no assistant turn to learn")
    users = [m["content"].strip() for m in messages[:last] if m["role"] == "user"]
    if not users:
        raise DataError(f"{where}: 'messages' has no user turn before the last assistant turn")
    return "\n\n".join(users), messages[last]["content"]
