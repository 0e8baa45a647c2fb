"""ASGI entry point: ``hypercorn asgi:app``. Reads the environment through settings.py only."""

from mailsvc.app import create_app
from settings import load_settings

settings = load_settings()
app = create_app(settings.mail_config(), settings.service_config())
