"""What the JSON parser accepts but no email can carry: lone surrogates and absurd nesting, refused by field.

Why a walk of its own after parsing: Python's ``json`` module accepts ``"\\ud800"``
(a lone UTF-16 surrogate, which no UTF-8 message can hold) and nests as deep as
the interpreter's recursion allows, while pydantic's JSON serialisation (the
idempotency fingerprint) refuses both with an exception, not a field. Finding them
here, with the path of the field, makes each a 422 that names it.

    >>> first_problem({"to": ["a@b.example"], "context": {"name": "\\ud800"}})
    FieldError(field='context.name', reason='is not valid Unicode (a lone surrogate)')
    >>> first_problem({"context": [[[1]]]}, max_depth=3)
    FieldError(field='context[0][0]', reason='is nested deeper than 3 levels')
"""

from __future__ import annotations

from typing import Any

from .problems import FieldError

__all__ = ["MAX_DEPTH", "first_problem"]

MAX_DEPTH = 32  # objects and arrays inside the body; an email's context needs a handful


def _bad_text(s: str) -> bool:
    if s.isascii():
        return False
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def first_problem(value: Any, path: str = "", max_depth: int = MAX_DEPTH) -> FieldError | None:
    """The first string that is not valid Unicode, or container nested past ``max_depth``, by path.

    Iterative, so a body nested a thousand levels deep costs no recursion.
    """
    stack: list[tuple[str, Any, int]] = [(path, value, 0)]
    while stack:
        where, item, depth = stack.pop()
        if isinstance(item, str):
            if _bad_text(item):
                return FieldError(field=where or "body", reason="is not valid Unicode (a lone surrogate)")
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                return FieldError(field=where or "body", reason=f"is nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key in reversed(list(item)):
                    if _bad_text(key):
                        return FieldError(field=where or "body", reason="has a key that is not valid Unicode")
                    stack.append((_join(where, key), item[key], depth + 1))
            else:
                for i in range(len(item) - 1, -1, -1):
                    stack.append((_join(where, i), item[i], depth + 1))
    return None
