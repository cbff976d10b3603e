"""JSON from people and the outside world, parsed without the ways it can break a process.

json.loads raises RecursionError (not ValueError) on deep nesting, and accepts NUL
characters and unpaired surrogates that PostgreSQL and UTF-8 refuse later, far
from the input. Every boundary that takes JSON text (the API, the schedule admin,
run_task, beat's reading of schedule rows) uses this one reader.
"""

from __future__ import annotations

import json
from typing import Any

# No input of this project needs more than a few levels; deeper values would reach
# forms, task arguments and JSON columns that were never meant for them.
MAX_DEPTH = 20


class JsonInputError(ValueError):
    """The text is not JSON this project takes; `path` names the part at fault ("" for the whole)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON text; JsonInputError for invalid JSON, nesting over max_depth, NUL or unpaired surrogates."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise JsonInputError(f"The JSON is nested deeper than {max_depth} levels.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise JsonInputError(f"Not valid JSON: {exc}.") from None
    check(value, max_depth=max_depth)
    return value


def check(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """JsonInputError for the first part of a parsed value that is nested too deep or holds unstorable text.

    Walked without recursion, so a deep value cannot exhaust the stack here either.
    """
    stack: list[tuple[str, Any, int]] = [("", value, 0)]
    while stack:
        path, item, depth = stack.pop()
        if depth > max_depth:
            raise JsonInputError(f"The JSON is nested deeper than {max_depth} levels.")
        if isinstance(item, dict):
            for key, child in item.items():
                if bad_text(key):
                    raise JsonInputError("A key contains a NUL character or an unpaired surrogate.", path)
                stack.append((f"{path}.{key}" if path else str(key), child, depth + 1))
        elif isinstance(item, list):
            stack.extend(
                (f"{path}.{index}" if path else str(index), child, depth + 1) for index, child in enumerate(item)
            )
        elif isinstance(item, str) and bad_text(item):
            raise JsonInputError("The text contains a NUL character or an unpaired surrogate.", path)


def bad_text(text: str) -> bool:
    """NUL cannot be stored in a PostgreSQL text column; a lone surrogate cannot be encoded as UTF-8."""
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
