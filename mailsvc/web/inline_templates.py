"""Template strings sent in a request are user input: render them in Jinja's sandbox, capped.

Why not the app's template environment: that one trusts its files. Here a caller
controls the template, so attribute access goes through Jinja's
``SandboxedEnvironment``, HTML is autoescaped, and the work of one request is
bounded four ways: the template source is capped before it compiles; every
builtin that can amplify its input (``range``, repetition, ``center``, ``join``,
``%``-formatting, ...) is checked before it allocates (:mod:`.template_guards`);
output stops at a size cap; and a :class:`RenderBudget` of executed template
lines and of wall-clock seconds is shared by all the renders of a request.
Syntax errors, and Python's own compiler limits (too deeply nested blocks), are
found once, at compile time, before anything is queued.

>>> t = InlineTemplate.compile("subject", "Hi {{ name }}", html=False, max_chars=100)
>>> t.render({"name": "Ann"})
'Hi Ann'
"""

from __future__ import annotations

import operator
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from ..rendering import DictItemsFirst
from .template_guards import (
    MAX_ALLOC,
    MAX_INT_BITS,
    checked_format_spec,
    checked_percent,
    guard_filters,
    guarded_str_method,
)

__all__ = ["InlineTemplate", "InlineTemplateError", "RenderBudget", "request_budget"]

_MAX_RANGE = 10_000
_MAX_REPEAT = MAX_ALLOC
_MAX_STEPS = 200_000  # template lines executed per render
_CLOCK_EVERY = 256  # trace events between two looks at the clock


class InlineTemplateError(ValueError):
    """A request's template string does not compile or does not render; ``field`` names it."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class _Env(DictItemsFirst, SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "*":
            _check_product(left, right)
            return operator.mul(left, right)
        if operator_ == "**":
            _check_power(left, right)
            return operator.pow(left, right)
        if operator_ == "%" and isinstance(left, str):
            checked_percent(left, right)
            return operator.mod(left, right)
        return super().call_binop(context, operator_, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        guarded_str_method(__obj, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Any:
        wrapper = super().wrap_str_format(value)
        if wrapper is not None:
            checked_format_spec(value.__self__)
        return wrapper


def _check_product(left: Any, right: Any) -> None:
    for seq, n in ((left, right), (right, left)):
        if isinstance(seq, str | list | tuple | bytes) and isinstance(n, int) and len(seq) * n > _MAX_REPEAT:
            raise SecurityError("repetition too large")
    if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
        raise SecurityError("integer too large")


def _check_power(left: Any, right: Any) -> None:
    if isinstance(right, int) and abs(right) > 100:
        raise SecurityError("exponent too large")
    if isinstance(left, int) and isinstance(right, int) and left.bit_length() * abs(right) > MAX_INT_BITS:
        raise SecurityError("integer too large")


@dataclass
class RenderBudget:
    """What all the renders of one request may spend: template lines executed and wall-clock time.

    Why both: lines bound a loop that prints nothing; the clock bounds work done
    in Python code the template calls (a filter's generator), which has no lines
    of its own template to count.
    """

    steps: int
    deadline: float  # time.monotonic() past which every render of the request stops
    seconds: float

    def check_clock(self) -> None:
        if time.monotonic() > self.deadline:
            raise SecurityError(f"the request's templates take longer than {self.seconds:g} s in total")


def request_budget(renders: int, seconds: float = 5.0) -> RenderBudget:
    """Steps for a whole request (generous per message, about a second of CPU per 10k) and a time limit."""
    return RenderBudget(max(_MAX_STEPS, 1000 * renders), time.monotonic() + seconds, seconds)


def _bounded_range(*args: int) -> range:
    r = range(*args)
    if len(r) > _MAX_RANGE:
        raise SecurityError(f"range larger than {_MAX_RANGE}")
    return r


def _env(autoescape: bool) -> _Env:
    env = _Env(autoescape=autoescape, undefined=jinja2.StrictUndefined)
    env.globals["range"] = _bounded_range
    del env.globals["lipsum"]  # seconds of CPU in one call, and nothing an email needs
    guard_filters(env.filters)
    return env


_TEXT_ENV = _env(False)
_HTML_ENV = _env(True)


class InlineTemplate:
    """One compiled request template; :meth:`render` raises :class:`InlineTemplateError`."""

    def __init__(self, field: str, template: jinja2.Template, max_chars: int) -> None:
        self.field = field
        self._template = template
        self._max = max_chars

    @classmethod
    def compile(
        cls, field: str, source: str, *, html: bool, max_chars: int, max_source: int | None = None
    ) -> InlineTemplate:
        """Compile once per request (in a thread: compiling is CPU work proportional to the source)."""
        if max_source is not None and len(source) > max_source:
            raise InlineTemplateError(field, f"template is {len(source)} characters; the limit is {max_source}")
        env = _HTML_ENV if html else _TEXT_ENV
        try:
            return cls(field, env.from_string(source), max_chars)
        except jinja2.TemplateSyntaxError as exc:
            raise InlineTemplateError(field, f"template syntax error on line {exc.lineno}: {exc.message}") from None
        except SyntaxError as exc:  # Python's own limits on the generated code (20 nested blocks, 100 indents)
            raise InlineTemplateError(field, f"template is nested too deeply: {exc.msg}") from None
        except (RecursionError, MemoryError, ValueError, TypeError, OverflowError) as exc:
            raise InlineTemplateError(field, f"template does not compile: {type(exc).__name__}: {exc}"[:300]) from None

    def render(self, context: Mapping[str, Any], where: str | None = None, shared: RenderBudget | None = None) -> str:
        """Render with ``context``; errors name ``where`` (e.g. ``recipients[3].context``).

        Besides the output cap, template code gets a budget of executed lines
        (counted by a trace function on the template's own frames only), so
        nested loops that print nothing cannot pin a CPU either; and every
        ``_CLOCK_EVERY`` trace events (lines, and calls of any Python function,
        generators resumed included) the request's wall-clock deadline is checked.
        ``shared`` is the budget of the whole request, spent across its renders.
        """
        field = where or self.field
        out: list[str] = []
        size = 0
        steps = [_MAX_STEPS]
        tick = [_CLOCK_EVERY]

        def clock() -> None:
            tick[0] -= 1
            if tick[0] <= 0:
                tick[0] = _CLOCK_EVERY
                if shared is not None:
                    shared.check_clock()

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            if event == "line":
                steps[0] -= 1
                if steps[0] < 0:
                    raise SecurityError(f"template runs more than {_MAX_STEPS} steps")
                if shared is not None:
                    shared.steps -= 1
                    if shared.steps < 0:
                        raise SecurityError("the request's templates run too many steps in total")
                clock()
            return local

        def global_(frame: FrameType, event: str, arg: Any) -> Any:
            if frame.f_code.co_filename == "<template>":
                return local
            clock()
            return None

        previous = sys.gettrace()
        sys.settrace(global_)
        try:
            return self._render(context, field, out, size)
        finally:
            sys.settrace(previous)

    def _render(self, context: Mapping[str, Any], field: str, out: list[str], size: int) -> str:
        try:
            for chunk in self._template.generate(dict(context)):
                size += len(chunk)
                if size > self._max:
                    raise InlineTemplateError(field, f"{self.field} renders to more than {self._max} characters")
                out.append(chunk)
        except InlineTemplateError:
            raise
        except jinja2.UndefinedError as exc:
            raise InlineTemplateError(field, f"{self.field}: variable missing from context: {exc.message}") from None
        except SecurityError as exc:
            raise InlineTemplateError(field, f"{self.field}: not allowed in a template: {exc}") from None
        except (
            jinja2.TemplateError,
            ArithmeticError,
            TypeError,
            ValueError,
            LookupError,
            AttributeError,
            RecursionError,
            MemoryError,
        ) as exc:
            raise InlineTemplateError(
                field, f"{self.field}: does not render: {type(exc).__name__}: {exc}"[:500]
            ) from None
        return "".join(out)
