"""fastapi-mail in its best mode (run in bench/.venv-peers).

Its list send: ``FastMail.send_message([MessageSchema, ...], html_template=...,
plain_template=...)`` renders every message and sends them over one connection.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jinja2
import workload
from fastapi_mail import ConnectionConfig, FastMail, MessageSchema, MessageType


async def main() -> None:
    args = workload.parse_args(__doc__ or "")
    conf = ConnectionConfig(
        MAIL_USERNAME="",
        MAIL_PASSWORD="",
        MAIL_FROM=workload.SENDER_ADDR,
        MAIL_FROM_NAME="News",
        MAIL_SERVER=args.host,
        MAIL_PORT=args.port,
        MAIL_STARTTLS=False,
        MAIL_SSL_TLS=False,
        USE_CREDENTIALS=False,
        VALIDATE_CERTS=False,
        TEMPLATE_FOLDER=workload.TEMPLATES,
    )
    fm = FastMail(conf)
    subject_t = jinja2.Environment(loader=jinja2.FileSystemLoader(str(workload.TEMPLATES))).get_template(
        f"{workload.TEMPLATE}.subject.txt"
    )
    clock = workload.Clock()
    msgs = [
        MessageSchema(
            subject=subject_t.render(ctx).strip(), recipients=[rcpt], template_body=ctx, subtype=MessageType.html
        )
        for rcpt, ctx in workload.contexts(args.n)
    ]
    try:
        await fm.send_message(
            msgs, html_template=f"{workload.TEMPLATE}.html", plain_template=f"{workload.TEMPLATE}.txt"
        )
        ok, failed = len(msgs), 0
    except Exception as exc:  # all or nothing: fastapi-mail does not say which message failed
        print(f"fastapi-mail failed: {exc}", file=sys.stderr)
        ok, failed = 0, len(msgs)
    clock.report("fastapi-mail list", ok, failed)


if __name__ == "__main__":
    asyncio.run(main())
