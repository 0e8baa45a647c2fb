"""ASGI entry point: ``hypercorn asgi:app``. Reads the environment through settings.py only."""

import logging

from mailsvc.app import create_app
from settings import load_settings

if not logging.getLogger("mailsvc").handlers:  # one line per accepted message and delivery outcome
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.getLogger("mailsvc").addHandler(_handler)
    logging.getLogger("mailsvc").setLevel(logging.INFO)

settings = load_settings()
app = create_app(settings.mail_config(), settings.service_config())
