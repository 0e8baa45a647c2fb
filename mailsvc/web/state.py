"""Per-app web state (keys, rate limiter, limits) and the guards every route runs first.

Why on the app and not module globals: two apps in one process (tests) keep
their own keys and buckets.
"""

from __future__ import annotations

from dataclasses import dataclass

from quart import Quart, request

from ..config import ServiceConfig, WebConfig
from ..extension import MailState
from ..outbox import Outbox
from ..services import services
from .auth import KeyRing, Principal
from .problems import ProblemException, retry_after
from .ratelimit import RateLimiter
from .schemas import CheckContext

__all__ = ["WebState", "web_state"]


@dataclass
class WebState:
    service: ServiceConfig
    keys: KeyRing
    limiter: RateLimiter

    @property
    def config(self) -> WebConfig:
        return self.service.web

    @classmethod
    def from_service(cls, service: ServiceConfig) -> WebState:
        return cls(service, KeyRing(service.web.api_keys), RateLimiter(service.web.rate_limit, service.web.rate_burst))

    @property
    def mail(self) -> MailState:
        return services().mail

    def check_context(self) -> CheckContext:
        return CheckContext(self.config, self.mail.renderer)

    def outbox(self) -> Outbox:
        outbox = services().outbox
        if outbox is None:
            raise ProblemException(503, "the outbox is not open yet", headers=retry_after(5))
        return outbox

    def rate(self, principal: Principal) -> None:
        wait = self.limiter.take(principal.id)
        if wait is not None:
            raise ProblemException(429, "rate limit exceeded for this key; slow down", headers=retry_after(wait))

    def api_principal(self, *, allow_session: bool = False) -> Principal:
        """Bearer key (or the open service's anonymous caller); GET routes also accept the form's session."""
        if allow_session:
            p = self.keys.from_session()
            if p is not None:
                self.rate(p)
                return p
        p = self.keys.bearer(request)
        self.rate(p)
        return p


def web_state(app: Quart | None = None) -> WebState:
    return services(app).web_state()
