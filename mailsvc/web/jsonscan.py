"""A JSON object whose one big array is walked an element at a time instead of parsed whole.

Why: a 100,000-recipient bulk body is ~75 MB of JSON but ~290 MB once parsed into
Python objects. Here the body stays text: the top-level fields are parsed, and the
``recipients`` array is only checked for well-formedness, then walked later with
the json module's own C scanner, one element at a time. This module knows nothing
of HTTP, pydantic or mail (the request model lives in :mod:`mailsvc.web.bulkstream`).

    >>> body = BulkBody.parse('{"subject": "Hi", "text": "x", "recipients": [{"to": "a@b.example"}]}')
    >>> body.head, [r for _, r in body.recipients()]
    ({'subject': 'Hi', 'text': 'x'}, [{'to': 'a@b.example'}])
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any, cast

__all__ = ["BulkBody"]

# A pattern that matches the empty string never returns None: typed so, at no cost per call.
_ws: Callable[[str, int], re.Match[str]] = cast(Callable[[str, int], "re.Match[str]"], re.compile(r"[ \t\n\r]*").match)
_DECODER = json.JSONDecoder()
_scan = _DECODER.scan_once  # type: ignore[attr-defined]  # the C scanner json.loads uses: (value, end) at an index
_scanstring = json.decoder.scanstring  # type: ignore[attr-defined]


class _Malformed(ValueError):
    pass


class BulkBody:
    """The top-level object of a JSON text, with the ``recipients`` array left unparsed."""

    def __init__(self, text: str, head: Any, recipients_at: int | None) -> None:
        self.text = text
        self.head = head
        self.recipients_at = recipients_at  # index of its "[", or None (absent, or not an array)

    @classmethod
    def parse(cls, text: str) -> BulkBody:
        """Raise ``ValueError`` saying where, for a text that is not JSON."""
        try:
            return cls._parse(text)
        except json.JSONDecodeError:
            raise
        except StopIteration as exc:
            raise ValueError(f"Expecting value: char {exc.value}") from None
        except _Malformed as exc:
            raise ValueError(f"Unexpected character: char {exc.args[0] if exc.args else '?'}") from None
        except IndexError:
            raise ValueError("Unexpected end of the body") from None

    @classmethod
    def _parse(cls, text: str) -> BulkBody:
        i = _ws(text, 0).end()
        if text[i : i + 1] != "{":
            value, end = _scan(text, i)  # not an object: BulkRequest.check refuses it with 422
            if _ws(text, end).end() != len(text):
                raise _Malformed(i)
            return cls(text, value, None)
        head: dict[str, Any] = {}
        recipients_at: int | None = None
        i = _ws(text, i + 1).end()
        if text[i] == "}":
            i += 1
        else:
            while True:
                if text[i] != '"':
                    raise _Malformed(i)
                key, i = _scanstring(text, i + 1)
                i = _ws(text, i).end()
                if text[i] != ":":
                    raise _Malformed(i)
                i = _ws(text, i + 1).end()
                if key == "recipients" and text[i] == "[":
                    head.pop(key, None)
                    recipients_at = i
                    i = _skip_array(text, i)
                else:
                    if key == "recipients":
                        recipients_at = None
                    head[key], i = _scan(text, i)
                i = _ws(text, i).end()
                c = text[i]
                i += 1
                if c == "}":
                    break
                if c != ",":
                    raise _Malformed(i)
                i = _ws(text, i).end()
        if _ws(text, i).end() != len(text):
            raise _Malformed(i)
        return cls(text, head, recipients_at)

    def recipients(self, start: int | None = None) -> Iterator[tuple[int | None, Any]]:
        """``(where the next element starts, element)`` for each element; ``None`` after the last one.

        ``start`` resumes at an index an earlier walk handed back; by default the walk begins at the ``[``.
        """
        text = self.text
        if start is None:
            if self.recipients_at is None:
                return
            i = _ws(text, self.recipients_at + 1).end()
            if text[i] == "]":
                return
        else:
            i = start
        while True:
            value, i = _scan(text, i)
            i = _ws(text, i).end()
            c = text[i]
            if c == "]":
                yield None, value
                return
            if c != ",":
                raise _Malformed(i)
            i = _ws(text, i + 1).end()
            yield i, value


def _skip_array(text: str, i: int) -> int:
    """The index after the array that starts at ``i``, checking it is well-formed (elements are dropped)."""
    i = _ws(text, i + 1).end()
    if text[i] == "]":
        return i + 1
    while True:
        _, i = _scan(text, i)
        i = _ws(text, i).end()
        c = text[i]
        i += 1
        if c == "]":
            return i
        if c != ",":
            raise _Malformed(i)
        i = _ws(text, i).end()
