"""Per-app web state (keys, rate limiters, limits) and the guards every route runs first.

Why on the app and not module globals: two apps in one process (tests) keep
their own keys and buckets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quart import Quart, request

from ..config import ServiceConfig, WebConfig
from ..extension import MailState
from ..outbox import Outbox
from ..services import Services, services
from . import sessions
from .auth import KeyRing, Principal
from .problems import ProblemException, retry_after
from .ratelimit import FailureLimiter, RateLimiter, client_address
from .schemas import CheckContext
from .tenants import Scope

__all__ = ["WebState", "web_state"]


@dataclass
class WebState:
    service: ServiceConfig
    keys: KeyRing
    limiter: RateLimiter  # per tenant
    failures: FailureLimiter  # failed keys and sign-ins, per client address
    # The app's parts, held here: every request reads the mail state and the outbox through them, and looking
    # them up through ``current_app`` each time cost more than the rest of those reads (None: look them up).
    parts: Services | None = None
    _checks: CheckContext | None = field(default=None, repr=False)

    @property
    def config(self) -> WebConfig:
        return self.service.web

    @classmethod
    def from_service(cls, service: ServiceConfig, parts: Services | None = None) -> WebState:
        """Raises :class:`~mailsvc.errors.ConfigError` when ``MAILSVC_API_KEYS_FILE`` cannot be used."""
        web = service.web
        return cls(
            service,
            KeyRing.from_config(web),
            RateLimiter(web.rate_limit, web.rate_burst),
            FailureLimiter(web.auth_failure_limit),
            parts,
        )

    @property
    def _parts(self) -> Services:
        return self.parts if self.parts is not None else services()

    @property
    def mail(self) -> MailState:
        return self._parts.mail

    def check_context(self) -> CheckContext:
        """Made again only when the renderer changed (the config never does)."""
        renderer = self.mail.renderer
        checks = self._checks
        if checks is None or checks.renderer is not renderer:
            checks = self._checks = CheckContext(self.config, renderer)
        return checks

    def outbox(self) -> Outbox:
        outbox = self._parts.outbox
        if outbox is None:
            raise ProblemException(503, "the outbox is not open yet", headers=retry_after(5))
        return outbox

    def rate(self, principal: Principal) -> None:
        wait = self.limiter.take(principal.bucket)
        if wait is not None:
            raise ProblemException(429, "rate limit exceeded for this tenant; slow down", headers=retry_after(wait))

    async def api_principal(self, scope: Scope, *, allow_session: bool = False) -> Principal:
        """Bearer key (or the open service's anonymous caller) that may ``scope`` (else 403), rate-limited.

        GET routes also accept the form's session (``allow_session``) when no Authorization is sent:
        a key named explicitly is the one that acts.
        """
        use_session = allow_session and "Authorization" not in request.headers
        p = await self.session_principal() if use_session else None
        if p is None:
            p = self.keys.bearer(request, self.failures)
        p.require(scope)
        self.rate(p)
        return p

    async def session_principal(self) -> Principal | None:
        """The form's signed-in user (None on an open service, which has no sign-in)."""
        if self.keys.open:
            return None
        return await sessions.signed_in(self.keys, self.outbox())

    def bearer_is_valid(self) -> bool:
        """Whether the request carries a valid key, counted like any Bearer attempt (for ``/readyz``'s details).

        An address past its failure limit gets False, so this is no way around the limit.
        """
        if self.keys.open:
            return False
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        address = client_address(request.remote_addr)
        if self.failures.blocked(address) is not None:
            return False
        if self.keys.identify(token.strip()) is None:
            self.failures.failed(address)
            return False
        return True


def web_state(app: Quart | None = None) -> WebState:
    return services(app).web_state()
