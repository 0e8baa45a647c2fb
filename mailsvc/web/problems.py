"""RFC 9457 problem details: every JSON error the service answers has this one shape.

Why one module: clients branch on ``status`` and read ``errors`` (a list of
``{"field", "reason"}``) without caring which layer refused the request, and the
OpenAPI document describes exactly this model.

>>> p = Problem(status=422, title="Invalid fields", errors=[FieldError(field="to[0]", reason="not an address")])
>>> p.status
422
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from quart import Response

__all__ = ["FieldError", "Problem", "ProblemException", "errors_from_validation", "problem_response"]

PROBLEM_JSON = "application/problem+json"


class FieldError(BaseModel):
    """One offending field: a dotted/indexed path like ``recipients[3].to`` and why it was refused."""

    field: str
    reason: str


class Problem(BaseModel):
    """``application/problem+json`` body (RFC 9457) with an ``errors`` extension member."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: list[FieldError] = Field(default_factory=list)


class ProblemException(Exception):
    """Raised anywhere below a route to answer with a problem; nothing has been queued yet."""

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        errors: Iterable[FieldError] = (),
        headers: Mapping[str, str] | None = None,
        title: str | None = None,
    ) -> None:
        self.status = status
        self.detail = detail
        self.errors = list(errors)
        self.headers = dict(headers or {})
        self.title = title or HTTPStatus(status).phrase
        super().__init__(f"{status} {self.title}: {detail or ''}")


def problem_response(exc: ProblemException) -> Response:
    body = Problem(title=exc.title, status=exc.status, detail=exc.detail, errors=exc.errors)
    resp = Response(
        json.dumps(body.model_dump(exclude_none=True), ensure_ascii=False),
        status=exc.status,
        content_type=PROBLEM_JSON,
        headers=exc.headers,
    )
    return resp


def retry_after(seconds: float) -> dict[str, str]:
    """``Retry-After`` in whole seconds, never 0 (a 0 invites a hot retry loop)."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def _loc_to_path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def is_too_large(exc: ValidationError) -> bool:
    """Whether what is wrong is a size (413 rather than 422): the schemas raise ``too_large`` for those."""
    return any(e.get("type") == "too_large" for e in exc.errors(include_url=False))


def validation_problem(
    exc: ValidationError, detail: str | None = "some fields are invalid; nothing was queued"
) -> ProblemException:
    """A failed validation as the answer every input path gives: 413 for a size, else 422, every field named."""
    return ProblemException(413 if is_too_large(exc) else 422, detail, errors=errors_from_validation(exc))


def not_an_object() -> ProblemException:
    return ProblemException(
        422, "the body must be a JSON object", errors=[FieldError(field="body", reason="expected an object")]
    )


def not_json(exc: Exception) -> ProblemException:
    """400 naming where the body stops being JSON (the parser's message, capped)."""
    return ProblemException(400, f"the body is not valid JSON: {exc}"[:300])


def errors_from_validation(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    """pydantic's report as ``FieldError``s, dropping union-branch noise (``to.str``, ``to.list[str]``)."""
    result: list[FieldError] = []
    seen: set[tuple[str, str]] = set()
    for err in exc.errors(include_url=False):
        loc = [p for p in err.get("loc", ()) if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS))]
        path = _loc_to_path(loc)
        if prefix:
            path = f"{prefix}.{path}" if path != "body" else prefix
        reason = plain_reason(err)
        m = _LEADING_FIELD.match(reason)
        if path == "body" and m:  # a whole-model check names its field as "field: why"
            path, reason = m.group(1), reason[m.end() :]
        if (path, reason) not in seen:
            seen.add((path, reason))
            result.append(FieldError(field=path, reason=reason))
    return result


_SHAPE_REASONS = {
    "missing": "is required",
    "extra_forbidden": "is not a field this API knows; remove it",
    "list_type": "must be a list",
    "string_type": "must be a string",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
}


def plain_reason(err: Mapping[str, Any]) -> str:
    """pydantic's message in words a form user understands ("is required", not "Field required")."""
    kind, ctx = err.get("type", ""), err.get("ctx") or {}
    if kind in _SHAPE_REASONS:
        return _SHAPE_REASONS[kind]
    if kind == "string_too_short":
        n = ctx.get("min_length")
        return "must not be empty" if n == 1 else f"must be at least {n} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "too_short":
        n = ctx.get("min_length")
        return "must have at least one entry" if n == 1 else f"must have at least {n} entries"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} entries"
    return str(err.get("msg", "invalid")).removeprefix("Value error, ")


_LEADING_FIELD = re.compile(r"^([a-z_]+): ")
_UNION_TAGS = {"str", "list", "dict", "int", "function-after"}
