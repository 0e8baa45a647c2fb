"""``mailsvc bulk FILE``: one personalised message per row of a CSV or JSON-lines file, queued as one batch.

Why all-or-nothing: every row is parsed, rendered and checked before anything is
queued, and the batch is enqueued in one transaction, so a bad row 4,000 never
leaves 3,999 messages half-sent and a re-run sending them twice.

    CSV:   a header row; the address column is ``email`` (or ``to``), the others are template variables.
           email,name
           ann@example.com,Ann
    JSONL: one object per line, ``{"to": "ann@example.com", "context": {"name": "Ann"}}``,
           or flat: ``{"email": "ann@example.com", "name": "Ann"}``.

Exit codes: 0 queued (and, with ``--wait``, all delivered), 1 the outbox refused,
or some messages failed/expired, or ``--timeout`` passed; 2 bad usage or input
(nothing queued); 3 the batch vanished while waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ..errors import MailError, MessageError, NotFoundError, OutboxError, TemplateError
from .send import InputError, add_label_options, fail, labels_from, outbox_from

if TYPE_CHECKING:
    from ..message import Envelope
    from ..outbox import EnqueueResult, Labels

__all__ = ["Row", "read_rows", "register", "run"]

MAX_ERRORS_SHOWN = 20
_ADDRESS_KEYS = ("email", "to")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bulk",
        help="queue one templated message per row of a CSV or JSON-lines file, as one batch",
        description="Queue one message per recipient row as a single batch (all rows or none). "
        "CSV: header row with an 'email' (or 'to') column, other columns are template variables. "
        'JSONL: {"to": ..., "context": {...}} or flat objects with an "email" key.',
        epilog="Exit codes: 0 queued (with --wait: all delivered), 1 outbox refused, some failed, or timeout; "
        "2 bad usage or input (nothing queued).",
    )
    p.add_argument("file", metavar="FILE", help="CSV (.csv) or JSON lines (.jsonl/.ndjson) file; '-' for stdin")
    p.add_argument("-t", "--template", required=True, help="template name under templates/email/")
    p.add_argument("--format", choices=("csv", "jsonl"), help="file format (default: from the file's extension)")
    p.add_argument("-s", "--subject", help="subject for every message (overrides the template's)")
    p.add_argument("--from", dest="sender", metavar="ADDRESS", help="sender (default MAIL_DEFAULT_SENDER)")
    p.add_argument("--idempotency-key", metavar="KEY", help="re-running with the same key queues nothing new")
    add_label_options(p)  # --tag, --meta, --at: for every message of the batch
    p.add_argument(
        "--stream", default="default", help="the stream it is mailed on (default 'default'): suppressed recipients skip"
    )
    p.add_argument("--tenant", help="queue it as this tenant (its suppression list applies; default: none)")
    p.add_argument(
        "--wait", action="store_true", help="after queueing, show delivery progress until every message is done"
    )
    p.add_argument("--poll", type=float, default=0.5, metavar="SECONDS", help="--wait polling interval (default 0.5)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="give up waiting after this long")
    p.set_defaults(handler=run)


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    to: list[str]
    context: dict[str, Any]


def _format_of(args: argparse.Namespace) -> str:
    if args.format:
        return str(args.format)
    suffix = Path(args.file).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise InputError(f"--format: cannot tell the format of {args.file!r}; name it .csv or .jsonl, or pass --format")


def _addresses(value: Any, line: int) -> list[str]:
    if isinstance(value, str) and value.strip():
        return [value.strip()]
    if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
        return [v.strip() for v in value]
    raise InputError(f"line {line}: to: needs an address (a string or a list of strings)")


def _csv_rows(stream: TextIO) -> Iterator[Row | InputError]:
    reader = csv.DictReader(stream)
    fields = [f.strip() for f in reader.fieldnames or []]
    key = next((k for k in _ADDRESS_KEYS if k in fields), None)
    if key is None:
        raise InputError(f"line 1: the CSV header needs an 'email' (or 'to') column; found {fields}")
    for record in reader:
        try:
            yield _csv_row(record, key, reader.line_num)
        except InputError as exc:
            yield exc


def _csv_row(record: dict[str | None, Any], key: str, line: int) -> Row:
    if None in record:  # more cells than header columns
        raise InputError(f"line {line}: more values than the header has columns")
    data = {(k or "").strip(): v for k, v in record.items()}
    return Row(line, _addresses(data.pop(key), line), data)


def _jsonl_rows(stream: TextIO) -> Iterator[Row | InputError]:
    for line, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield InputError(f"line {line}: not valid JSON ({exc.msg}, column {exc.colno})")
            continue
        if not isinstance(obj, dict):
            yield InputError(f"line {line}: must be a JSON object")
            continue
        try:
            yield _json_row(obj, line)
        except InputError as exc:
            yield exc


def _json_row(obj: dict[str, Any], line: int) -> Row:
    if "context" in obj:  # {"to": ..., "context": {...}}
        extra = sorted(set(obj) - {"to", "context"})
        if extra:
            raise InputError(f"line {line}: unexpected key(s) {extra} beside 'to' and 'context'")
        if not isinstance(obj["context"], dict):
            raise InputError(f"line {line}: context: must be a JSON object")
        return Row(line, _addresses(obj.get("to"), line), obj["context"])
    key = next((k for k in _ADDRESS_KEYS if k in obj), None)  # flat: {"email": ..., "name": ...}
    if key is None:
        raise InputError(f"line {line}: needs a 'to' (or 'email') key")
    data = dict(obj)
    return Row(line, _addresses(data.pop(key), line), data)


def read_rows(text: str, fmt: str) -> tuple[list[Row], list[str]]:
    """All rows and all per-line problems of a recipients file."""
    stream = io.StringIO(text, newline="")
    rows, errors = [], []
    for item in _csv_rows(stream) if fmt == "csv" else _jsonl_rows(stream):
        if isinstance(item, InputError):
            errors.append(str(item))
        else:
            rows.append(item)
    if not rows and not errors:
        errors.append("the file has no recipient rows")
    return rows, errors


class Progress:
    """A one-line progress bar on stderr (redrawn in place on a terminal, a few plain lines otherwise)."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label, self.total = label, max(total, 1)
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._last_pct = -1

    def update(self, done: int, note: str = "") -> None:
        pct = int(100 * done / self.total)
        if not self.tty and pct // 25 == self._last_pct // 25 and done < self.total:
            return  # in logs: 0, 25, 50, 75, 100 % only
        if self.tty and pct == self._last_pct and done < self.total and not note:
            return
        self._last_pct = pct
        width = 30
        filled = int(width * done / self.total)
        bar = "#" * filled + "-" * (width - filled)
        text = f"{self.label} [{bar}] {done}/{self.total} {pct:3d}%{('  ' + note) if note else ''}"
        self.stream.write(("\r" + text + "\033[K") if self.tty else text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _build(rows: list[Row], args: argparse.Namespace, settings: Any) -> tuple[list[Envelope], list[str]]:
    from ..envelopes import build_envelope
    from ..message import Message
    from ..rendering import TemplateRenderer
    from ..templatepaths import email_folders

    renderer = TemplateRenderer(email_folders(settings.MAILSVC_TEMPLATES))
    if not renderer.exists(args.template):
        raise InputError(f"--template: no template {args.template!r} in {', '.join(map(str, renderer.folders))}")
    config = settings.mail_config()
    envelopes: list[Envelope] = []
    errors: list[str] = []
    progress = Progress("Preparing", len(rows))
    for i, row in enumerate(rows, start=1):
        try:
            subject, text, html = renderer.render_parts(args.template, row.context)
            msg = Message(args.subject or subject, recipients=row.to, body=text, html=html, sender=args.sender)
            envelopes.append(build_envelope(msg, config))
        except TemplateError as exc:
            errors.append(f"line {row.line}: {exc.reason}")
        except MessageError as exc:
            errors.append(f"line {row.line}: {exc.field}: {exc.reason}")
        progress.update(i)
    progress.finish()
    return envelopes, errors


async def _wait(settings: Any, batch_id: str, total: int, poll: float, timeout: float | None) -> dict[str, int]:
    from ..outbox.states import FINAL_MESSAGE

    progress = Progress("Delivering", total)
    deadline = None if timeout is None else time.monotonic() + timeout
    async with outbox_from(settings) as outbox:
        while True:
            counts = await outbox.batch_status(batch_id)
            done = sum(n for state, n in counts.items() if state in FINAL_MESSAGE)
            progress.update(done, ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
            if done >= total or (deadline is not None and time.monotonic() >= deadline):
                progress.finish()
                return counts
            await asyncio.sleep(poll)


def run(args: argparse.Namespace) -> int:
    from ..cli import EXIT_OK, EXIT_USAGE, load_project_settings

    settings = load_project_settings()
    try:
        labels = labels_from(args, settings)
        envelopes, errors = _prepare(args, settings)
    except InputError as exc:
        return fail(EXIT_USAGE, str(exc))
    if errors:
        return _refuse(errors, args.file)
    queued = _enqueue(settings, envelopes, args, labels)
    if isinstance(queued, int):
        return queued
    print(queued.batch_id)
    return _wait_and_report(settings, queued, args) if args.wait else EXIT_OK


def _read(args: argparse.Namespace) -> str:
    try:
        return sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"FILE: cannot read {args.file!r}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"FILE: {args.file!r} is not UTF-8 text") from exc


def _prepare(args: argparse.Namespace, settings: Any) -> tuple[list[Envelope], list[str]]:
    """Every row parsed, rendered and built: (envelopes, per-row problems); InputError for the file as a whole."""
    fmt = _format_of(args)
    rows, errors = read_rows(_read(args), fmt)
    envelopes, build_errors = _build(rows, args, settings) if rows else ([], [])
    return envelopes, errors + build_errors


def _refuse(errors: list[str], file: str) -> int:
    """Show the first problems (and how many more) and queue nothing."""
    from ..cli import EXIT_USAGE

    for message in errors[:MAX_ERRORS_SHOWN]:
        print(f"mailsvc bulk: {message}", file=sys.stderr)
    if len(errors) > MAX_ERRORS_SHOWN:
        print(f"mailsvc bulk: ... and {len(errors) - MAX_ERRORS_SHOWN} more", file=sys.stderr)
    return fail(EXIT_USAGE, f"{len(errors)} bad row(s) in {file}; nothing was queued")


def _enqueue(
    settings: Any, envelopes: list[Envelope], args: argparse.Namespace, labels: Labels | None = None
) -> EnqueueResult | int:
    """The queued batch, or the exit code when the outbox refused it."""
    from ..cli import EXIT_FAILED, EXIT_USAGE
    from .send import enqueue

    print(f"Enqueuing {len(envelopes)} messages as one batch...", file=sys.stderr)
    try:
        result = asyncio.run(
            enqueue(
                settings,
                envelopes,
                batch=True,
                idempotency_key=args.idempotency_key,
                tenant=args.tenant,
                stream=args.stream,
                labels=labels,
            )
        )
    except OutboxError as exc:
        return fail(EXIT_FAILED, f"nothing queued: {exc}")
    except MailError as exc:
        return fail(EXIT_USAGE, str(exc))
    assert result.batch_id is not None  # enqueue(batch=True) always names the batch
    replay = " (idempotent replay)" if result.duplicate else ""
    print(f"batch {result.batch_id}: {len(result.ids)} messages queued{replay}", file=sys.stderr)
    return result


def _wait_and_report(settings: Any, result: EnqueueResult, args: argparse.Namespace) -> int:
    """``--wait``: follow the batch until every message is final (or ``--timeout``); exit 0 only if all delivered."""
    from ..cli import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK
    from ..outbox.states import FINAL_MESSAGE, MessageState

    assert result.batch_id is not None
    try:
        counts = asyncio.run(_wait(settings, result.batch_id, len(result.ids), args.poll, args.timeout))
    except NotFoundError as exc:
        return fail(EXIT_NOT_FOUND, str(exc))
    except OutboxError as exc:
        return fail(EXIT_FAILED, f"cannot read the batch status: {exc}")
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    done = sum(n for state, n in counts.items() if state in FINAL_MESSAGE)
    if done < len(result.ids):
        return fail(EXIT_FAILED, f"timed out waiting: {summary}")
    if counts.get(MessageState.DELIVERED, 0) != len(result.ids):
        return fail(EXIT_FAILED, f"not all delivered: {summary}")
    print(f"all {len(result.ids)} delivered", file=sys.stderr)
    return EXIT_OK
