"""Local training/eval files: ``.json`` (an array) or ``.jsonl`` (one object per line).

Two row layouts are accepted:

* Alpaca fields: ``instruction`` (str), optional ``input`` (str), ``output`` (str); an optional
  ``answer`` (str) becomes the gold answer and an optional ``category`` the partition label.
* Chat: ``messages`` = ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``; the last
  assistant turn is the response, the user turns before it (joined by blank lines) the prompt.

Malformed rows raise :class:`~smartfed.errors.DataError` as ``file:line: what is wrong`` (for a
``.json`` array the line is where the element starts).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smartfed.data.example import Example
from smartfed.errors import DataError

ROLES = ("system", "user", "assistant")


def load_local_examples(path: str | Path) -> list[Example]:
    """Read a local dataset file into examples.

    Raises:
        DataError: missing file, unknown extension, invalid JSON or a malformed row (file:line).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p} does not exist; pass a .json or .jsonl file of Alpaca or chat rows")
    if p.suffix not in (".json", ".jsonl"):
        raise DataError(f"{p}: unsupported extension {p.suffix!r}; use .json (array) or .jsonl")
    rows = _jsonl_rows(p) if p.suffix == ".jsonl" else _json_rows(p)
    examples = [row_to_example(obj, p, line, i) for i, (line, obj) in enumerate(rows)]
    if not examples:
        raise DataError(f"{p}: the file has no rows")
    return examples


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


def row_to_example(obj: Any, path: Path, line: int, index: int) -> Example:
    """Turn one row (Alpaca or chat layout) into an :class:`Example`.

    Raises:
        DataError: neither layout, or a field of the wrong type (file:line).
    """
    where = f"{path}:{line}"
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected an object, got {type(obj).__name__}")
    meta: dict[str, Any] = {"index": index, "line": line}
    if isinstance(obj.get("category"), str):
        meta["category"] = obj["category"]
    answer = obj.get("answer")
    if answer is not None and not isinstance(answer, str):
        answer = str(answer)
    if "messages" in obj:
        prompt, response = _chat(obj["messages"], where)
    elif "instruction" in obj:
        prompt, response = _alpaca(obj, where)
    else:
        raise DataError(f"{where}: row has neither 'instruction'/'output' nor 'messages'")
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
