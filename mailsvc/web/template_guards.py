"""Size checks that run *before* a request template's filter, method or operator allocates.

Why before: the render's output cap and step budget see only what the template
itself does. A single call into C (``'x'|center(10**9)``, ``'%*d' % (10**9, 1)``,
``range(10000)|join('x' * 99999)``) allocates a gigabyte in one step, and no
trace function can interrupt it. So every builtin that can make its output much
larger than its input is wrapped here with an estimate of that output, refused
with :class:`~jinja2.exceptions.SecurityError` when it passes :data:`MAX_ALLOC`.

    >>> checked_percent("%5d|%s", (1, "x"))
    >>> checked_percent("%*d", (10**9, 1))
    Traceback (most recent call last):
    ...
    jinja2.exceptions.SecurityError: a width or precision of 1000000000 is larger than 100000
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Mapping
from functools import wraps
from typing import Any

from jinja2.exceptions import SecurityError

__all__ = [
    "MAX_ALLOC",
    "MAX_INT_BITS",
    "checked_format_spec",
    "checked_percent",
    "guard_filters",
    "guarded_str_method",
]

MAX_ALLOC = 100_000  # characters one operation may produce (a template's whole output has its own cap)
MAX_INT_BITS = 4_096  # integers beyond this come from repeated squaring, never from an email

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?([a-zA-Z%])")
_NUMBER = re.compile(r"\d+")


def _check_size(n: int, what: str = "a width or precision") -> None:
    if n > MAX_ALLOC:
        raise SecurityError(f"{what} of {n} is larger than {MAX_ALLOC}")


def checked_percent(fmt: str, args: Any) -> None:
    """Refuse a ``%``-format whose widths or precisions (literal or ``*``) exceed :data:`MAX_ALLOC`."""
    values = list(args) if isinstance(args, tuple) else [args]
    i = 0
    for m in _PERCENT_SPEC.finditer(fmt):
        if m.group(3) == "%":
            continue
        for part in (m.group(1), m.group(2)):
            if part == "*":
                n = values[i] if i < len(values) else 0
                i += 1
                if isinstance(n, int):
                    _check_size(abs(n))
            elif part:
                _check_size(int(part))
        i += 1


def checked_format_spec(fmt: str) -> None:
    """Refuse a ``str.format`` template whose specs hold a number beyond the cap or a nested field."""
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format itself raises the same error, which the render turns into a 422
    for _, _, spec, _ in parsed:
        if not spec:
            continue
        if "{" in spec:
            raise SecurityError("a nested field in a format spec is not allowed in a request template")
        for number in _NUMBER.findall(spec):
            _check_size(int(number))


def _joined_size(items: list[Any], sep: str) -> int:
    return sum(len(str(x)) for x in items) + len(sep) * max(len(items) - 1, 0)


def _replaced_size(s: str, old: str, new: str, count: int | None = None) -> int:
    hits = len(s) + 1 if old == "" else s.count(old)
    if count is not None and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * (len(new) - len(old))


def _width(owner: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    width = args[0] if args else kwargs.get("width")
    if isinstance(width, int):
        _check_size(width, "a width")


def _expandtabs(owner: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    size = kwargs.get("tabsize", args[0] if args else 8)
    if isinstance(size, int):
        _check_size(len(owner) * max(size, 1), "the expanded size")


def _str_replace(owner: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    if len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        count = args[2] if len(args) > 2 and isinstance(args[2], int) else None
        _check_size(_replaced_size(owner, args[0], args[1], count), "the replaced size")


def _str_join(owner: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    raise SecurityError("str.join is not allowed in a request template; use the join filter")


_STR_METHODS: dict[str, Callable[[str, tuple[Any, ...], Mapping[str, Any]], None]] = {
    "ljust": _width,
    "rjust": _width,
    "center": _width,
    "zfill": _width,
    "expandtabs": _expandtabs,
    "replace": _str_replace,
    "join": _str_join,
}


def guarded_str_method(obj: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Check a call of a bound ``str`` method from a template before it runs (``'x'.ljust(10**9)``)."""
    owner = getattr(obj, "__self__", None)
    if not isinstance(owner, str):
        return
    check = _STR_METHODS.get(getattr(obj, "__name__", ""))
    if check is not None:
        check(owner, args, kwargs)


def _wrap(check: Callable[..., None], original: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        check(*args, **kwargs)
        return original(*args, **kwargs)

    return guarded


def _center(value: Any, width: int = 80, *_: Any, **__: Any) -> None:
    if isinstance(width, int):
        _check_size(width, "a width")


def _indent(s: Any, width: Any = 4, *_: Any, **__: Any) -> None:
    pad = width if isinstance(width, int) else len(str(width))
    _check_size(len(str(s)) + (str(s).count("\n") + 1) * max(pad, 0), "the indented size")


def _wordwrap(
    environment: Any, s: Any, width: int = 79, break_long_words: bool = True, wrapstring: Any = None, *_: Any
) -> None:
    if wrapstring is not None:
        _check_size(len(str(s)) * (1 + len(str(wrapstring))), "the wrapped size")


def _replace(eval_ctx: Any, s: Any, old: Any, new: Any, count: Any = None) -> None:
    if isinstance(old, str) and isinstance(new, str):
        _check_size(_replaced_size(str(s), old, new, count if isinstance(count, int) else None), "the replaced size")


def _format(value: Any, *args: Any, **kwargs: Any) -> None:
    checked_percent(str(value), kwargs or args)


def guard_filters(filters: dict[str, Callable[..., Any]]) -> None:
    """Replace the filters that can amplify their input with checked ones; ``join`` is rebuilt outright."""
    for name, check in (
        ("center", _center),
        ("indent", _indent),
        ("wordwrap", _wordwrap),
        ("replace", _replace),
        ("format", _format),
    ):
        filters[name] = _wrap(check, filters[name])  # wraps() keeps jinja_pass_arg (context passing)
    original_join = filters["join"]

    def join(eval_ctx: Any, value: Iterable[Any], d: str = "", attribute: Any = None) -> Any:
        items = list(value)
        _check_size(_joined_size(items, str(d)), "the joined size")
        return original_join(eval_ctx, items, d, attribute)

    join.jinja_pass_arg = original_join.jinja_pass_arg  # type: ignore[attr-defined]
    filters["join"] = join
