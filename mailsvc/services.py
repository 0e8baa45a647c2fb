"""Everything the running service holds, on one typed object: ``services(app)``.

Why one object and not ``app.extensions`` string keys: each part (outbox,
workers, web state, dev inbox, previews) used to pick its own key and cast what
it read back; a typo was a ``KeyError`` at request time and the type checker saw
``Any``. Here each part is an attribute with its type, set by the part that owns
it and read by the others.

Lifetimes: ``service``, ``mail``, ``web``, ``dev_inbox`` and ``previews`` exist
once the app is built; ``outbox`` and ``workers`` only while the app serves
(each part is a ``while_serving`` generator, so Quart tears them down in reverse
order of start by itself).

This module imports its parts' types for the type checker only: at run time it
depends on nothing but Quart, so every part can import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from quart import Quart, current_app

from .errors import OutboxError

if TYPE_CHECKING:  # the parts' types only; importing them here at run time would tie every layer together
    from .bounces import BounceServer
    from .config import ServiceConfig
    from .devinbox import DevInbox
    from .devinbox.store import InboxStore
    from .mailstate import MailState
    from .metrics import Metrics
    from .outbox import Outbox
    from .rendering import TemplateRenderer
    from .web.state import WebState
    from .webhooks import WebhookDispatcher
    from .worker import WorkerGroup
    from .workerprocess import WorkerProcess

__all__ = ["OutboxNotOpenError", "Services", "services"]

_KEY = "mailsvc.services"


class OutboxNotOpenError(OutboxError):
    """The outbox is opened while the app serves; outside that there is none to use."""

    def __init__(self) -> None:
        super().__init__("the outbox is opened while the app serves: run the app (or `async with app.test_app()`)")


@dataclass(eq=False)
class Services:
    """The service's parts; one per app, so two apps in one process (tests) share nothing."""

    service: ServiceConfig
    mail: MailState
    web: WebState | None = None
    dev_inbox: DevInbox | None = None
    previews: TemplateRenderer | None = None
    outbox: Outbox | None = None
    workers: WorkerGroup | None = None
    worker_process: WorkerProcess | None = None  # the workers' child process instead (MAILSVC_WORKER_PROCESS)
    bounces: BounceServer | None = None  # the bounce listener, while it serves (MAILSVC_BOUNCE_LISTEN)
    metrics: Metrics | None = None  # this app's Prometheus registry (GET /metrics or MAILSVC_METRICS_BIND)
    webhooks: WebhookDispatcher | None = None  # POSTs events to MAILSVC_WEBHOOKS, while the app serves
    cache: dict[str, Any] = field(default_factory=dict)  # small per-app memos (the readiness relay probe)

    def install(self, app: Quart) -> None:
        app.extensions[_KEY] = self

    def open_outbox(self) -> Outbox:
        """The open outbox; :class:`OutboxNotOpenError` before the app serves or after it stopped."""
        if self.outbox is None:
            raise OutboxNotOpenError()
        return self.outbox

    def web_state(self) -> WebState:
        if self.web is None:
            raise RuntimeError("the web layer is not registered on this app (mailsvc.web.register)")
        return self.web

    def inbox_store(self) -> InboxStore:
        if self.dev_inbox is None:
            raise RuntimeError("the dev inbox runs only in dev mode (no MAIL_SERVER)")
        return self.dev_inbox.store


def services(app: Quart | None = None) -> Services:
    """The app's :class:`Services` (the current app's inside a request or lifespan hook)."""
    target = app if app is not None else current_app
    found = target.extensions.get(_KEY)
    if not isinstance(found, Services):
        raise RuntimeError("this app was not built by mailsvc.app.create_app, so it has no service parts")
    return found
