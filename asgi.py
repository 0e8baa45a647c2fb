"""ASGI entry point: ``hypercorn asgi:app``. Reads the environment through settings.py only."""

from mailsvc.app import create_app
from mailsvc.logsetup import configure_logging
from settings import load_settings

# One line per accepted message and delivery outcome; hypercorn keeps its own handlers for its loggers.
configure_logging("INFO", attach_to="mailsvc")

settings = load_settings()
app = create_app(settings.mail_config(), settings.service_config())
