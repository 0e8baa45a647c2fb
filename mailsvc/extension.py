"""``Mail``: the Quart extension a Flask-Mail user already knows, with sending as coroutines.

Why the state lives on the app (``app.extensions["mailsvc"]``): two apps in one
process (tests!) get their own pool and their own ``record_messages`` list. The
pool is created lazily inside the running loop and closed in ``after_serving``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from quart import Quart, current_app, has_app_context

from . import message as message_module
from .addresses import AddressLike, parse_address
from .config import MAIL_KEYS, MailConfig, unknown_settings
from .errors import DeliveryError, MessageError, RecipientsRefusedError
from .mailstate import MailState
from .message import Envelope, Message
from .results import SendResult
from .transports.base import Transport
from .transports.factory import TransportFactory

log = logging.getLogger("mailsvc")

__all__ = ["Connection", "Mail", "MailState"]


_T = TypeVar("_T")


def _current_default_sender() -> AddressLike | None:
    """Inside an app context, that app's MAIL_DEFAULT_SENDER (Flask-Mail fills ``msg.sender`` at construction)."""
    if not has_app_context():
        return None
    state = current_app.extensions.get("mailsvc")
    return state.config.default_sender if isinstance(state, MailState) else None


message_module.ambient_default_sender = _current_default_sender


def _run_sync(work: Callable[[], Coroutine[Any, Any, _T]], name: str, app: Quart | None) -> _T:
    """Run ``work()`` in a loop of its own (in ``app``'s context if given); refuse if this thread runs a loop.

    ``work`` is a factory so that nothing is created (and left unawaited) when the call is refused.
    Quart's app context is async-only, so a thread cannot push one before calling us: we push it here.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_in_app_context(app, work))
    raise RuntimeError(f"mail.{name}_sync() was called inside a running event loop: use `await mail.{name}(...)`")


async def _in_app_context(app: Quart | None, work: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    if app is None:
        return await work()
    async with app.app_context():
        return await work()


def _raise_if_nothing_delivered(result: SendResult) -> SendResult:
    """Nobody accepted it: raise what smtplib's ``sendmail`` would (a partial refusal stays a result)."""
    if result.recipients and not any(r.ok for r in result.recipients):
        reason = f"no recipient accepted message {result.message_id}"
        if all(r.code is not None for r in result.recipients):
            refused = {
                r.recipient: (r.code or 0, (r.reply or "").encode("utf-8", "replace")) for r in result.recipients
            }
            raise RecipientsRefusedError(reason, recipients=refused, result=result)
        last = result.recipients[-1]
        raise DeliveryError(reason, code=last.code, reply=last.reply, result=result)
    return result


def _build_or_fail(state: MailState, msg: Message) -> Envelope | SendResult:
    """The envelope (and the message recorded), or a ``failed`` result naming the field that cannot be built."""
    try:
        envelope = state.build(msg)
    except MessageError as exc:
        recipients = tuple(str(r) for r in (*msg.recipients, *msg.cc, *msg.bcc))
        return SendResult.all_failed(msg._msg_id or "", recipients, str(exc))
    state.record(msg)
    return envelope


class Mail:
    """The extension: ``Mail(app)`` or ``mail.init_app(app)``, then ``await mail.send(msg)``.

    ``transport=`` swaps SMTP for any transport factory ``(MailConfig) -> Transport`` (a factory,
    not an instance: the pool opens several connections), as ``MAIL_TRANSPORT`` does by dotted path;
    ``Mail(app, transport=lambda config: MemoryTransport(outbox=sent))`` runs an app's tests with no socket.

    >>> app = Quart(__name__)
    >>> app.config.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=8025, MAIL_DEFAULT_SENDER="me@example.com")
    >>> mail = Mail(app)
    """

    def __init__(
        self,
        app: Quart | None = None,
        *,
        config: MailConfig | None = None,
        templates: str | Path | Sequence[str | Path] | None = None,
        transport: TransportFactory | None = None,
    ) -> None:
        self.app = app
        self._transport = transport
        self._standalone = MailState(config, templates, transport=transport) if config is not None else None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Quart) -> None:
        templates = app.config.get("MAIL_TEMPLATE_FOLDER") or (
            Path(app.root_path) / (app.template_folder or "templates") / "email"
        )
        mapping = dict(app.config)
        for line in unknown_settings(mapping, MAIL_KEYS):
            log.warning("app.config: %s", line)
        if mapping.get("MAIL_SUPPRESS_SEND") is None:
            # Flask-Mail's default: an app under test (TESTING=True) records but sends nothing.
            mapping["MAIL_SUPPRESS_SEND"] = app.testing
        state = MailState(MailConfig.from_mapping(mapping), templates, transport=self._transport)
        state.app = app
        app.extensions["mailsvc"] = state
        app.after_serving(state.aclose)

    @property
    def state(self) -> MailState:
        if self._standalone is not None:
            return self._standalone
        if self.app is None and not has_app_context():
            raise RuntimeError(
                "this Mail was set up with mail.init_app(app) and no app context is active: send from a view "
                "or inside `async with app.app_context():`, or pass the app: mail.send_sync(msg, app=app)"
            )
        app = self.app if self.app is not None else current_app
        try:
            return app.extensions["mailsvc"]  # type: ignore[no-any-return]
        except KeyError:
            raise RuntimeError("Mail is not initialised for this app: call mail.init_app(app)") from None

    # -- sending ---------------------------------------------------------------
    async def send(self, message: Message) -> SendResult:
        """Send one message on a pooled connection.

        Returns the per-recipient result (partial refusals included); raises
        :class:`DeliveryError` with the server's reply when nobody accepted it.
        """
        state = self.state
        envelope = state.build(message)
        state.record(message)
        if state.config.suppress_send:
            state.dispatched(message)
            return state.suppressed(envelope)
        try:
            async with state.pool.connection() as conn:
                result = await conn.send(envelope)
        except DeliveryError as exc:
            exc.result = SendResult.all_failed(envelope.message_id, envelope.recipients, str(exc), exc.code)
            raise
        _raise_if_nothing_delivered(result)
        state.dispatched(message)
        return result

    async def send_many(self, messages: Sequence[Message]) -> list[SendResult]:
        """Send concurrently over at most ``MAIL_POOL_SIZE`` connections; one result per message.

        Nothing raises for a single bad message: a message that cannot be built
        (bad header, bad address) gets a ``failed`` result naming the field.
        """
        state = self.state
        envelopes = [_build_or_fail(state, msg) for msg in messages]
        if state.config.suppress_send:
            results = [e if isinstance(e, SendResult) else state.suppressed(e) for e in envelopes]
        else:
            sent = iter(await state.pool.send_many([e for e in envelopes if isinstance(e, Envelope)]))
            results = [e if isinstance(e, SendResult) else next(sent) for e in envelopes]
        for msg, result in zip(messages, results, strict=True):
            if any(r.ok for r in result.recipients):
                state.dispatched(msg)
        return results

    async def send_message(self, *args: Any, **kwargs: Any) -> SendResult:
        """Flask-Mail's shortcut: ``await mail.send_message("Hi", recipients=[...], body="...")``."""
        return await self.send(Message(*args, **kwargs))

    # -- synchronous code: threads, Celery tasks, scripts -------------------------
    def send_sync(self, message: Message, *, app: Quart | None = None) -> SendResult:
        """:meth:`send` for code that has no event loop; blocks until the relay answered.

        Each call runs its own loop (``asyncio.run``), opens a connection in it and
        closes it before returning, like Flask-Mail's ``mail.send``. From a coroutine,
        ``await mail.send(msg)`` instead: blocking there would stall every other request.

        ``app`` is for a ``Mail`` set up with ``init_app`` (an app factory): the send runs in
        that app's context, as Flask-Mail code does with ``with app.app_context():``, which
        Quart only has in an ``async with`` form. ``Mail(app)`` knows its app and needs none.
        """
        return _run_sync(lambda: self.send(message), "send", app)

    def send_many_sync(self, messages: Sequence[Message], *, app: Quart | None = None) -> list[SendResult]:
        """:meth:`send_many` for code that has no event loop (one loop, one pool, for the whole batch)."""
        return _run_sync(lambda: self.send_many(messages), "send_many", app)

    def connect(self) -> Connection:
        """``async with mail.connect() as conn: await conn.send(msg)`` on one reused connection."""
        return Connection(self.state)

    @contextmanager
    def record_messages(self) -> Iterator[list[Message]]:
        """Record every message this app sends inside the block (with MAIL_SUPPRESS_SEND, none leave)."""
        outbox: list[Message] = []
        state = self.state
        state.recorders.append(outbox)
        try:
            yield outbox
        finally:
            state.recorders.remove(outbox)

    def render_message(self, name: str, context: dict[str, Any] | None = None, **fields: Any) -> Message:
        """Build a Message from ``templates/email/<name>.*``; see :class:`TemplateRenderer`."""
        renderer = self.state.renderer
        if renderer is None:
            raise RuntimeError("no template folder: pass templates= or set MAIL_TEMPLATE_FOLDER")
        return renderer.render_message(name, context, **fields)


class Connection:
    """One SMTP connection held for a block of sends; reconnects after ``MAIL_MAX_EMAILS``."""

    def __init__(self, state: MailState) -> None:
        self._state = state
        self._transport: Transport | None = None

    def __enter__(self) -> NoReturn:
        raise TypeError(
            "mail.connect() is asynchronous here: write `async with mail.connect() as conn:` "
            "and `await conn.send(msg)` (from synchronous code, use mail.send_sync / send_many_sync)"
        )

    def __exit__(self, *exc: object) -> None:  # present so that `with` reaches __enter__'s message
        return None

    async def __aenter__(self) -> Connection:
        if not self._state.config.suppress_send:
            self._transport = self._state.transport()
            await self._transport.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._transport is not None:
            await self._transport.close()

    async def send(self, message: Message, envelope_from: AddressLike | None = None) -> SendResult:
        """Send on this connection; ``envelope_from`` sets the ``MAIL FROM`` address only (as Flask-Mail's)."""
        envelope = self._state.build(message)
        if envelope_from is not None:
            bounce = parse_address(envelope_from, "envelope_from", self._state.config.address_rules)
            envelope = dataclasses.replace(envelope, sender=bounce.envelope)
        self._state.record(message)
        if self._transport is None:
            self._state.dispatched(message)
            return self._state.suppressed(envelope)
        limit = self._state.config.max_emails
        if limit is not None and self._transport.sent >= limit:
            await self._transport.close()
            await self._transport.open()
        result = _raise_if_nothing_delivered(await self._transport.send(envelope))
        self._state.dispatched(message)
        return result

    async def send_message(self, *args: Any, **kwargs: Any) -> SendResult:
        return await self.send(Message(*args, **kwargs))
