"""``mailsvc send``: queue one message from the shell and print its id.

Why through the outbox and not straight to SMTP: a message sent from a script
gets the same durability, retries and status (``mailsvc status ID``) as one
sent through the API; the service's workers (or ``mailsvc worker``) deliver it.

    mailsvc send ann@example.com --subject Hi --body "Hello Ann" --attach report.pdf
    mailsvc send ann@example.com --template welcome --context '{"name": "Ann", "url": "https://x"}'
    mailsvc send ann@example.com --subject Hi --body Hello --tag welcome --meta order=42 --at 2026-05-01T09:30:00Z
    echo "Hello" | mailsvc send ann@example.com --subject Hi --body -

Exit codes: 0 queued (the id is printed), 1 the outbox refused or failed,
2 bad usage or input (nothing queued).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import MailError, MessageError, OutboxError, TemplateError

if TYPE_CHECKING:
    from ..message import Envelope
    from ..outbox import EnqueueResult, Labels, Outbox

__all__ = [
    "InputError",
    "add_label_options",
    "build_envelopes",
    "enqueue",
    "labels_from",
    "load_context",
    "outbox_from",
    "register",
    "run",
]


class InputError(Exception):
    """Bad command-line input; ``str()`` names the option and why (exit code 2)."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "send",
        help="queue one message and print its id",
        description="Queue one message in the outbox and print its id. Body text, HTML, or a template "
        "from templates/email/ with a JSON context; attachments by path.",
        epilog="Exit codes: 0 queued, 1 outbox refused or failed, 2 bad usage or input (nothing queued).",
    )
    p.add_argument("to", nargs="+", metavar="ADDRESS", help="recipient address(es), e.g. 'Ann <ann@example.com>'")
    p.add_argument("-s", "--subject", help="subject (overrides the template's subject)")
    p.add_argument("-b", "--body", help="plain-text body; '-' reads it from standard input")
    p.add_argument("--html", help="HTML body; '-' reads it from standard input")
    p.add_argument("-t", "--template", help="template name under templates/email/ (instead of --body/--html)")
    p.add_argument("-c", "--context", help="template context: a JSON object, or @file.json")
    p.add_argument("--cc", action="append", default=[], metavar="ADDRESS", help="Cc recipient (repeatable)")
    p.add_argument("--bcc", action="append", default=[], metavar="ADDRESS", help="Bcc recipient (repeatable)")
    p.add_argument("--from", dest="sender", metavar="ADDRESS", help="sender (default MAIL_DEFAULT_SENDER)")
    p.add_argument("--reply-to", metavar="ADDRESS", help="Reply-To address")
    p.add_argument("-a", "--attach", action="append", default=[], metavar="PATH", help="attach a file (repeatable)")
    p.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'", help="extra header (repeatable)")
    p.add_argument("--idempotency-key", metavar="KEY", help="re-running with the same key queues nothing new")
    add_label_options(p)
    p.add_argument(
        "--stream",
        default="default",
        help="the stream it is mailed on (default 'default'): recipients suppressed there are not sent to",
    )
    p.add_argument("--tenant", help="queue it as this tenant (its suppression list applies; default: none)")
    p.set_defaults(handler=run)


def add_label_options(p: argparse.ArgumentParser) -> None:
    """``--tag``, ``--meta``, ``--at``: the API's ``tags``, ``metadata``, ``send_at`` (the rules of mailsvc.labels)."""
    p.add_argument("--tag", action="append", default=[], metavar="TAG", help="tag the message(s) (repeatable, 10 max)")
    p.add_argument(
        "--meta", action="append", default=[], metavar="KEY=VALUE", help="metadata stored with it (repeatable)"
    )
    p.add_argument("--at", metavar="TIME", help="send at this RFC 3339 time with an offset, e.g. 2026-05-01T09:30:00Z")


def labels_from(args: argparse.Namespace, settings: Any) -> Labels:
    """The options as the outbox's Labels; InputError naming the option when one breaks a rule."""
    from ..labels import check_metadata, check_send_at, check_tags
    from ..outbox import Labels

    metadata: dict[str, str] = {}
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--meta: {item[:60]!r} must look like 'key=value'")
        metadata[key] = value
    try:
        tags = check_tags(args.tag, "--tag")
        meta = check_metadata(metadata, "--meta")
        at = None if args.at is None else check_send_at(args.at, settings.MAILSVC_SCHEDULE_HORIZON, "--at")
    except MessageError as exc:
        raise InputError(f"{exc.field}: {exc.reason}") from None
    for value in (*tags, *meta, *meta.values()):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError("--meta: not valid text (undecodable bytes in the argument)") from None
    return Labels(tags, meta, at)


def load_context(raw: str | None, option: str = "--context") -> dict[str, Any]:
    """A JSON object given inline or as ``@path``."""
    if raw is None:
        return {}
    text = raw
    if raw.startswith("@"):
        try:
            text = Path(raw[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{option}: cannot read {raw[1:]!r}: {exc.strerror}") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{option}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    if not isinstance(value, dict):
        raise InputError(f'{option}: must be a JSON object like \'{{"name": "Ann"}}\'')
    return value


def _stdin_or(value: str | None) -> str | None:
    return sys.stdin.read() if value == "-" else value


def _attachments(paths: Sequence[str]) -> list[Any]:
    from ..message import Attachment

    out = []
    for raw in paths:
        path = Path(raw)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"--attach: cannot read {raw!r}: {exc.strerror}") from exc
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        out.append(Attachment(path.name, ctype, data, "attachment"))
    return out


def _headers(items: Sequence[str]) -> dict[str, str]:
    headers = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise InputError(f"--header: {item!r} must look like 'Name: value'")
        headers[name.strip()] = value.strip()
    return headers


def build_envelopes(args: argparse.Namespace, settings: Any) -> list[Envelope]:
    """Validate everything and build the wire form; raises InputError/MailError before any queueing."""
    from ..envelopes import build_envelope
    from ..message import Message

    subject, body, html = _content(args, settings)
    msg = Message(
        subject,
        recipients=list(args.to),
        body=body,
        html=html,
        sender=args.sender,
        cc=args.cc,
        bcc=args.bcc,
        reply_to=args.reply_to,
        attachments=_attachments(args.attach),
        extra_headers=_headers(args.header),
    )
    return [build_envelope(msg, settings.mail_config())]


def _content(args: argparse.Namespace, settings: Any) -> tuple[str, str | None, str | None]:
    """(subject, text, HTML) from --body/--html or a rendered --template; InputError when they do not add up."""
    body, html = _stdin_or(args.body), _stdin_or(args.html)
    _refuse_mixed_sources(args, body, html)
    subject = args.subject
    if args.template:
        tpl_subject, body, html = _render(args, settings)
        subject = subject if subject is not None else tpl_subject
    if body is None and html is None:
        raise InputError("--body: give a body (--body, --html or --template)")
    if not subject:
        raise InputError("--subject: a subject is required (or a template with a subject file)")
    return subject, body, html


def _refuse_mixed_sources(args: argparse.Namespace, body: str | None, html: str | None) -> None:
    if args.template and (body is not None or html is not None):
        raise InputError("--template: give either a template or --body/--html, not both")
    if args.context and not args.template:
        raise InputError("--context: only used with --template")


def _render(args: argparse.Namespace, settings: Any) -> tuple[str, str | None, str | None]:
    from ..rendering import TemplateRenderer
    from ..templatepaths import email_folders

    renderer = TemplateRenderer(email_folders(settings.MAILSVC_TEMPLATES))
    return renderer.render_parts(args.template, load_context(args.context))


def outbox_from(settings: Any) -> Outbox:
    """The project's outbox, unopened, with the same limits (MAILSVC_MAX_PENDING, ...) as the service."""
    from ..serviceoutbox import service_outbox

    return service_outbox(settings.service_config())


async def enqueue(
    settings: Any,
    envelopes: Sequence[Envelope],
    *,
    batch: bool = False,
    idempotency_key: str | None = None,
    labels: Labels | None = None,
    tenant: str | None = None,
    stream: str | None = None,
) -> EnqueueResult:
    """Open the outbox, enqueue in one transaction, close; returns the EnqueueResult."""
    async with outbox_from(settings) as outbox:
        extra: dict[str, Any] = {} if labels is None else {"labels": labels}
        return await outbox.enqueue(
            envelopes, batch=batch, idempotency_key=idempotency_key, tenant=tenant, stream=stream, **extra
        )


def fail(code: int, message: str) -> int:
    print(f"mailsvc: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    from ..cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, load_project_settings

    settings = load_project_settings()
    try:
        labels = labels_from(args, settings)
        envelopes = build_envelopes(args, settings)
    except InputError as exc:
        return fail(EXIT_USAGE, str(exc))
    except TemplateError as exc:
        return fail(EXIT_USAGE, f"--template: {exc}")
    except MessageError as exc:
        return fail(EXIT_USAGE, f"{exc.field}: {exc.reason}")
    try:
        result = asyncio.run(
            enqueue(
                settings,
                envelopes,
                idempotency_key=args.idempotency_key,
                labels=labels,
                tenant=args.tenant,
                stream=args.stream,
            )
        )
    except OutboxError as exc:
        return fail(EXIT_FAILED, f"not queued: {exc}")
    except MailError as exc:  # ConfigError for a bad MAILSVC_DATABASE_URL, MessageError from the outbox
        return fail(EXIT_USAGE, str(exc))
    print(result.ids[0])
    return EXIT_OK
