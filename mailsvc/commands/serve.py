"""``mailsvc serve``: run the service under hypercorn with the project's settings."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="run the web service (hypercorn)", description="Run the service under hypercorn.")
    p.add_argument("--bind", default="127.0.0.1:8000", help="host:port to listen on (default 127.0.0.1:8000)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from ..app import create_app
    from ..cli import load_project_settings

    import logging

    settings = load_project_settings()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("mailsvc").setLevel(logging.INFO)  # one line per accepted message and delivery outcome
    app = create_app(settings.mail_config(), settings.service_config())
    config = Config()
    config.bind = [args.bind]
    config.accesslog = "-"
    asyncio.run(serve(app, config))  # type: ignore[arg-type]
    return 0
