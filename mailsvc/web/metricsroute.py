"""``GET /metrics``: the app's Prometheus metrics, for a key with the ``admin`` scope.

Why ``admin``: the figures are the whole service's, every tenant's volume and outcomes
together, so a tenant's own ``send``/``read`` key may not see them. A deployment whose
keys are all plain ``MAILSVC_API_KEYS`` serves them with ``MAILSVC_METRICS_BIND`` on a
private address instead (no key there); then this route answers 404, so the figures are
never on the public port.
"""

from __future__ import annotations

from quart import Blueprint, Response, abort

from ..services import services
from .state import web_state
from .tenants import Scope

__all__ = ["bp"]

bp = Blueprint("mailsvc_metrics", __name__)


@bp.get("/metrics")
async def metrics() -> Response:
    parts = services()
    if parts.metrics is None or parts.service.metrics_bind is not None:
        abort(404)
    await web_state().api_principal(Scope.ADMIN)
    return Response(await parts.metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")
