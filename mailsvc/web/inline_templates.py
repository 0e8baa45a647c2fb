"""Template strings sent in a request are user input: render them in Jinja's sandbox, capped.

Why not the app's template environment: that one trusts its files. Here a caller
controls the template, so attribute access goes through Jinja's
``SandboxedEnvironment``, ``range`` and string/list repetition are bounded, HTML
is autoescaped, and output stops at a size cap instead of filling memory.
Syntax errors are found once, at compile time, before anything is queued.

>>> t = InlineTemplate.compile("subject", "Hi {{ name }}", html=False, max_chars=100)
>>> t.render({"name": "Ann"})
'Hi Ann'
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Mapping
from types import FrameType
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from ..rendering import DictItemsFirst

__all__ = ["InlineTemplate", "InlineTemplateError", "request_budget"]

_MAX_RANGE = 10_000
_MAX_REPEAT = 100_000
_MAX_STEPS = 200_000  # template lines executed per render


class InlineTemplateError(ValueError):
    """A request's template string does not compile or does not render; ``field`` names it."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class _Env(DictItemsFirst, SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple, bytes)) and isinstance(n, int) and len(seq) * n > _MAX_REPEAT:
                    raise SecurityError("repetition too large")
            return operator.mul(left, right)
        if operator_ == "**":
            if isinstance(right, int) and abs(right) > 100:
                raise SecurityError("exponent too large")
            return operator.pow(left, right)
        return super().call_binop(context, operator_, left, right)


def request_budget(renders: int) -> list[int]:
    """Steps for a whole request: generous per message, but bounded (about a second of CPU per 10k)."""
    return [max(_MAX_STEPS, 1000 * renders)]


def _bounded_range(*args: int) -> range:
    r = range(*args)
    if len(r) > _MAX_RANGE:
        raise SecurityError(f"range larger than {_MAX_RANGE}")
    return r


def _env(autoescape: bool) -> _Env:
    env = _Env(autoescape=autoescape, undefined=jinja2.StrictUndefined)
    env.globals["range"] = _bounded_range
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
    def compile(cls, field: str, source: str, *, html: bool, max_chars: int) -> InlineTemplate:
        env = _HTML_ENV if html else _TEXT_ENV
        try:
            return cls(field, env.from_string(source), max_chars)
        except jinja2.TemplateSyntaxError as exc:
            raise InlineTemplateError(field, f"template syntax error on line {exc.lineno}: {exc.message}") from None
        except (RecursionError, MemoryError, ValueError, TypeError) as exc:
            raise InlineTemplateError(field, f"template does not compile: {exc}") from None

    def render(self, context: Mapping[str, Any], where: str | None = None, shared: list[int] | None = None) -> str:
        """Render with ``context``; errors name ``where`` (e.g. ``recipients[3].context``).

        Besides the output cap, template code gets a budget of executed lines
        (counted by a trace function on the template's own frames only), so
        nested loops that print nothing cannot pin a CPU either. ``shared`` is a
        budget for a whole request (``[steps]``), spent across its renders.
        """
        field = where or self.field
        out: list[str] = []
        size = 0
        steps = [_MAX_STEPS]

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            if event == "line":
                steps[0] -= 1
                if steps[0] < 0:
                    raise SecurityError(f"template runs more than {_MAX_STEPS} steps")
                if shared is not None:
                    shared[0] -= 1
                    if shared[0] < 0:
                        raise SecurityError("the request's templates run too many steps in total")
            return local

        def global_(frame: FrameType, event: str, arg: Any) -> Any:
            return local if frame.f_code.co_filename == "<template>" else None

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
