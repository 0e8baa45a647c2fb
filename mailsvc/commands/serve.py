"""``mailsvc serve``: run the service under hypercorn with the project's settings and limits (mailsvc.serving)."""

from __future__ import annotations

import argparse
import sys

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
    from ..cli import EXIT_FAILED, EXIT_USAGE, load_project_settings
    from ..errors import MailError
    from ..gctune import tune_for_service
    from ..logsetup import configure_logging
    from ..workerprocess import decide

    settings = load_project_settings()
    service = decide(settings.service_config())  # the workers in a process of their own? (mailsvc.workerprocess)
    configure_logging(args.log_level, fmt=service.log_format)
    try:
        app = create_app(settings.mail_config(), service)
    except MailError as exc:  # an open relay, a bad keys file, a missing template folder: one line, no traceback
        print(f"mailsvc: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    tune_for_service()  # the app is built: keep the collector off it (mailsvc.gctune)
    config = Config()
    config.bind = [args.bind]
    config.errorlog = logging.getLogger("hypercorn.error")  # through our root handler, not a second one
    config.errorlog.setLevel(logging.INFO)  # "Running on ..."
    config.accesslog = "-"
    try:
        serving.run(app, config, service)  # timeouts, header limit, connection cap, accept errors throttled
    except Exception as exc:  # a part that cannot start (the dev SMTP port taken, the outbox unreachable)
        cause = _mail_error_in(exc)
        if cause is None:
            raise
        print(f"mailsvc: cannot start: {cause}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _mail_error_in(exc: BaseException) -> BaseException | None:
    """Our own error behind hypercorn's lifespan failure, if that is what stopped the start."""
    from ..errors import MailError

    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return None
        if isinstance(seen, MailError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
