"""Amazon SES v2 over HTTPS: ``SendEmail`` with ``Content.Raw``, through aiobotocore.

Why raw: the bytes mailsvc built (headers, MIME, the DKIM signature, List-Unsubscribe) go out unchanged;
SES only adds its own signature and Message-ID header. Why a transport and not a relay setting: SES is
not SMTP, but the pool, the worker, retries and results only need :class:`Transport`'s contract.

Outcomes follow the SMTP rules the worker already applies (:mod:`mailsvc.retry`), so each SES answer is
mapped to the reply an SMTP relay would have given:

- accepted → ``250`` per recipient, with SES's message id in the reply;
- throttled (``TooManyRequestsException``, ``ThrottlingException``, HTTP 429) or over the daily quota
  (``LimitExceededException``) → ``454 4.7.0``: deferred and retried later, never failed;
- ``MessageRejected``, ``MailFromDomainNotVerifiedException``, ``BadRequestException`` → ``554 5.x``: failed;
- the account paused or suspended, SES unreachable or answering 5xx → :class:`ConnectionFailedError`,
  which the worker treats as relay trouble (everything deferred, claiming paused with backoff).

Credentials come from the standard AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an
instance role): mailsvc never holds them, so it cannot log them. SES allows 50 recipients per call
(``MAIL_SES_MAX_RECIPIENTS``), so a message with more goes out in several calls of the same bytes. SES's
per-second limit is a limit on recipients: :class:`SendRate` paces every transport of one endpoint in a
process to ``MAIL_SES_MAX_SEND_RATE`` (or, unset, to the ``MaxSendRate`` SES reports for the account).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from ..config import MailConfig
from ..errors import ConfigError, ConnectionFailedError
from ..message import Envelope
from ..results import RecipientResult, SendResult
from .base import Transport

__all__ = ["SESTransport", "SendRate"]

log = logging.getLogger("mailsvc.ses")

_THROTTLED = frozenset({"TooManyRequestsException", "ThrottlingException", "Throttling", "LimitExceededException"})
_REJECTED = {
    "MessageRejected": "5.6.0",
    "MailFromDomainNotVerifiedException": "5.7.1",
    "BadRequestException": "5.5.4",
    "NotFoundException": "5.5.4",  # e.g. a configuration set that does not exist
}
_PAUSED = frozenset({"AccountSuspendedException", "SendingPausedException"})


@dataclass
class SendRate:
    """A token bucket of recipients per second, shared by every SES transport of one endpoint and loop."""

    per_second: float
    _tokens: float = 0.0
    _last: float = field(default=0.0)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def take(self, n: int) -> None:
        """Wait until ``n`` recipients may be sent; at most one second's worth of burst is saved up."""
        loop = asyncio.get_running_loop()
        async with self._lock:  # held while waiting: callers are served in turn
            now = loop.time()
            full = self.per_second
            self._tokens = full if self._last == 0.0 else min(full, self._tokens + (now - self._last) * self.per_second)
            self._last = now
            self._tokens -= n
            if self._tokens < 0:
                await asyncio.sleep(-self._tokens / self.per_second)
                self._last, self._tokens = loop.time(), 0.0


# (loop, region, endpoint) -> the shared rate: several pooled transports are one SES account.
_RATES: dict[tuple[int, str, str], SendRate | None] = {}


class SESTransport(Transport):
    """One aiobotocore ``sesv2`` client; ``MAIL_TRANSPORT=ses`` selects it.

    >>> SESTransport(MailConfig(transport="ses", ses_region="eu-west-1")).is_open
    False
    """

    def __init__(self, config: MailConfig) -> None:
        if not config.ses_region:
            raise ConfigError("MAIL_SES_REGION", "the SES transport needs the AWS region to send from, e.g. eu-west-1")
        self.config = config
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._rate: SendRate | None = None

    @property
    def is_open(self) -> bool:
        return self._client is not None

    async def open(self) -> None:
        try:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session
        except ImportError as exc:  # pragma: no cover - the extra is part of the test install
            raise ConfigError(
                "MAIL_TRANSPORT", "the SES transport needs aiobotocore: pip install 'mailsvc[ses]'"
            ) from exc
        stack = contextlib.AsyncExitStack()
        retries: Any = {"total_max_attempts": 1}  # the outbox retries, with its own schedule
        client_config = AioConfig(
            retries=retries, connect_timeout=self.config.timeout, read_timeout=self.config.timeout
        )
        try:
            self._client = await stack.enter_async_context(
                get_session().create_client(
                    "sesv2",
                    region_name=self.config.ses_region,
                    endpoint_url=self.config.ses_endpoint_url,
                    config=client_config,
                )
            )
        except Exception as exc:
            await stack.aclose()
            raise ConnectionFailedError(f"cannot create the SES client: {type(exc).__name__}: {exc}") from exc
        self._stack = stack
        self._rate = await self._shared_rate()
        self.sent = 0

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()

    async def _shared_rate(self) -> SendRate | None:
        key = (id(asyncio.get_running_loop()), self.config.ses_region or "", self.config.ses_endpoint_url or "")
        if key not in _RATES:
            per_second = self.config.ses_max_send_rate
            if per_second is None:
                per_second = await self._account_rate()
            _RATES[key] = SendRate(per_second) if per_second else None
        return _RATES[key]

    async def _account_rate(self) -> float | None:
        """SES's ``MaxSendRate`` for the account; None (no pacing) if it cannot be read."""
        try:
            account = await self._client.get_account()
            return float(account["SendQuota"]["MaxSendRate"])
        except Exception as exc:  # no permission for GetAccount, or an SES look-alike without it
            response = getattr(exc, "response", None) or {}
            why = response.get("Error", {}).get("Code") or type(exc).__name__
            log.warning(
                "SES: could not read the account's MaxSendRate (%s); not pacing: set MAIL_SES_MAX_SEND_RATE", why
            )
            return None

    async def send(self, envelope: Envelope) -> SendResult:
        if self._client is None:
            raise ConnectionFailedError("the SES transport is not open")
        results: list[RecipientResult] = []
        recipients = envelope.recipients
        step = self.config.ses_max_recipients
        for start in range(0, len(recipients), step):
            chunk = recipients[start : start + step]
            results += await self._send_chunk(envelope, chunk)
        self.sent += 1
        return SendResult(envelope.message_id, tuple(results))

    async def _send_chunk(self, envelope: Envelope, chunk: tuple[str, ...]) -> list[RecipientResult]:
        from botocore.exceptions import BotoCoreError, ClientError

        if self._rate is not None:
            await self._rate.take(len(chunk))
        request: dict[str, Any] = {
            "FromEmailAddress": envelope.sender,
            "Destination": {"ToAddresses": list(chunk)},
            "Content": {"Raw": {"Data": envelope.data}},
        }
        if self.config.ses_configuration_set:
            request["ConfigurationSetName"] = self.config.ses_configuration_set
        try:
            answer = await self._client.send_email(**request)
        except ClientError as exc:
            return self._refused(exc, chunk)
        except (BotoCoreError, OSError, TimeoutError) as exc:
            raise ConnectionFailedError(f"SES unreachable: {type(exc).__name__}: {exc}") from exc
        reply = f"2.0.0 Ok: queued by SES as {answer.get('MessageId', '?')}"
        return [RecipientResult(r, "delivered", 250, reply) for r in chunk]

    def _refused(self, exc: Any, chunk: tuple[str, ...]) -> list[RecipientResult]:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        text = str(error.get("Message", "")) or code
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _THROTTLED or status == 429:
            return [RecipientResult(r, "refused", 454, f"4.7.0 SES {code or 'throttling'}: {text}") for r in chunk]
        if code in _REJECTED:
            return [RecipientResult(r, "refused", 554, f"{_REJECTED[code]} SES {code}: {text}") for r in chunk]
        if code in _PAUSED or status >= 500 or status == 0:
            raise ConnectionFailedError(f"SES {code or status}: {text}")
        # Any other 4xx from the API (an unknown error code): refused, and failed, since a retry asks the same.
        return [RecipientResult(r, "refused", 554, f"5.0.0 SES {code or status}: {text}") for r in chunk]
