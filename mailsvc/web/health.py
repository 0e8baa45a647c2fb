"""``GET /readyz``: ready when the outbox is writable; also says whether the relay answered lately.

Why the relay does not decide readiness: with the relay down, accepted mail
still waits safely in the outbox, so the service should keep accepting it. The
relay probe (a TCP connect with a short deadline) is cached so that a busy
load balancer does not turn into a connection storm against the relay.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from quart import Blueprint, Response

from ..errors import OutboxError
from ..services import services
from .state import web_state

__all__ = ["bp"]

bp = Blueprint("mailsvc_health", __name__)
log = logging.getLogger(__name__)
_CACHE_SECONDS = 30.0
_PROBE_TIMEOUT = 2.0
_PROBE = "relay_probe"  # its entry in services().cache


async def _relay_reachable() -> dict[str, Any]:
    cache = services().cache
    cached: dict[str, Any] | None = cache.get(_PROBE)
    now = time.monotonic()
    if cached is not None and now - cached["_at"] < _CACHE_SECONDS:
        return {k: v for k, v in cached.items() if not k.startswith("_")}
    config = services().mail.config
    result: dict[str, Any] = {"host": config.server, "port": config.port}
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(config.server, config.port), _PROBE_TIMEOUT)
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), _PROBE_TIMEOUT)
        except (OSError, TimeoutError):
            pass
        result["reachable"] = True
    except (OSError, TimeoutError) as exc:
        result["reachable"] = False
        result["error"] = type(exc).__name__
    cache[_PROBE] = {**result, "_at": now}
    return result


@bp.get("/readyz")
async def readyz() -> Response:
    outbox = services().outbox
    body: dict[str, Any] = {"outbox": "ok", "relay": await _relay_reachable()}
    status = 200
    if outbox is None:
        body["outbox"], status = "not open", 503
    else:
        try:
            await outbox.ping()
            body["pending"] = await outbox.pending_count()
        except OutboxError as exc:
            # The detail (file path, driver error) is for the operator's log, not for anonymous callers.
            log.warning("readyz: outbox unavailable: %s", exc)
            body["outbox"], status = "unavailable: the outbox cannot be written (details in the service log)", 503
    workers = services().workers
    if workers is not None and workers.relays is not None:
        # MAILSVC_RELAYS_FILE: each relay's state in this process's workers (up or down until when,
        # the pace, today's count); none of them decides readiness, as for the single relay.
        body["relays"] = workers.relays.describe()
    child = services().worker_process
    if child is not None:  # the workers' process (mailsvc.workerprocess): restarting does not decide readiness
        body["worker_process"] = child.describe()
    body["status"] = "ready" if status == 200 else "not ready"
    if not _may_see_details():
        body = {"status": body["status"]}  # the relay's address and the queue length are the operator's
    return Response(json.dumps(body), status=status, content_type="application/json")


def _may_see_details() -> bool:
    """Dev mode (everything is local) or a caller with a valid API key; never an anonymous caller."""
    ws = web_state()
    if ws.service.dev_mode:
        return True
    return ws.bearer_is_valid()
