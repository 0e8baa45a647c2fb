"""Flask-Mail senders (run in bench/.venv-peers, never in the project's venv).

``--variant threads`` is the seed's pattern: one thread, and so one SMTP
connection, per message (``Thread(target=send_async_email).start()``).
``--variant connect`` reuses one ``mail.connect()`` for every message.
Both render the same Jinja2 templates as every other sender.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jinja2
import workload
from flask import Flask
from flask_mail import Mail, Message


def main() -> None:
    args = workload.parse_args(__doc__ or "")
    app = Flask(__name__)
    app.config.update(MAIL_SERVER=args.host, MAIL_PORT=args.port, MAIL_DEFAULT_SENDER=workload.SENDER)
    mail = Mail(app)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(workload.TEMPLATES)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",)),
        undefined=jinja2.StrictUndefined,
    )
    subject_t = env.get_template(f"{workload.TEMPLATE}.subject.txt")
    text_t = env.get_template(f"{workload.TEMPLATE}.txt")
    html_t = env.get_template(f"{workload.TEMPLATE}.html")

    def build(rcpt: str, ctx: dict) -> Message:
        return Message(
            subject_t.render(ctx).strip(),
            recipients=[rcpt],
            sender=workload.SENDER,
            body=text_t.render(ctx),
            html=html_t.render(ctx),
        )

    ok = 0
    failed = 0
    lock = threading.Lock()

    def send_async(msg: Message) -> None:
        nonlocal ok, failed
        with app.app_context():
            try:
                mail.send(msg)
            except Exception:  # the seed's pattern loses errors in the thread; we count them
                with lock:
                    failed += 1
                return
        with lock:
            ok += 1

    clock = workload.Clock()
    if args.variant == "threads":
        threads = []
        for rcpt, ctx in workload.contexts(args.n):
            t = threading.Thread(target=send_async, args=(build(rcpt, ctx),))
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
    elif args.variant == "connect":
        with app.app_context(), mail.connect() as conn:
            for rcpt, ctx in workload.contexts(args.n):
                try:
                    conn.send(build(rcpt, ctx))
                    ok += 1
                except Exception:
                    failed += 1
    else:
        raise SystemExit(f"unknown variant {args.variant!r}: threads or connect")
    clock.report(f"flask-mail {args.variant}", ok, failed)


if __name__ == "__main__":
    main()
