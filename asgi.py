"""ASGI entry point: ``hypercorn asgi:app``. Reads the environment through settings.py only."""

from quart.signals import got_serving_exception

from mailsvc.app import create_app
from mailsvc.errors import ConfigError
from mailsvc.gctune import tune_for_service
from mailsvc.logsetup import configure_logging
from mailsvc.startfailure import fail_supervisor, refuse_start
from mailsvc.workerprocess import decide
from settings import load_settings

# One line per accepted message and delivery outcome; hypercorn keeps its own handlers for its loggers.
configure_logging("INFO", attach_to="mailsvc")

try:
    settings = load_settings()
    configure_logging("INFO", attach_to="mailsvc", fmt=settings.MAILSVC_LOG_FORMAT)
    # The delivery workers in a process of their own when a core is free for it (mailsvc.workerprocess).
    app = create_app(settings.mail_config(), decide(settings.service_config()))
except SystemExit as exc:  # load_settings' one-line refusal
    refuse_start(str(exc.code))
except ConfigError as exc:  # create_app's refusals (an open relay, ...)
    refuse_start(f"mailsvc: configuration error: {exc}")

# A part that cannot start while serving (the dev SMTP port taken, the outbox unreachable) also fails the start.
got_serving_exception.connect(fail_supervisor, app)
tune_for_service()  # the app is built: keep the collector off it (mailsvc.gctune)
