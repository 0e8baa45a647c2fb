"""``mailsvc serve``: run the service under hypercorn with the project's settings and limits (mailsvc.serving)."""

from __future__ import annotations

import argparse

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the web service (hypercorn)", description="Run the service under hypercorn.")
    p.add_argument("--bind", default="127.0.0.1:8000", help="host:port to listen on (default 127.0.0.1:8000)")
    p.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LEVELS,
        help="level of mailsvc's own logs (default INFO); SQL drivers and SMTP libraries stay at WARNING",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from hypercorn.config import Config

    from .. import serving
    from ..app import create_app
    from ..cli import load_project_settings
    from ..logsetup import configure_logging

    settings = load_project_settings()
    configure_logging(args.log_level)
    service = settings.service_config()
    app = create_app(settings.mail_config(), service)
    config = Config()
    config.bind = [args.bind]
    config.errorlog = logging.getLogger("hypercorn.error")  # through our root handler, not a second one
    config.errorlog.setLevel(logging.INFO)  # "Running on ..."
    config.accesslog = "-"
    serving.run(app, config, service)  # timeouts, header limit, connection cap, accept errors throttled
    return 0
