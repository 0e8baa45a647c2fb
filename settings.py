"""This project's settings module: mailsvc's settings, with this project's ``templates/`` as the override folder.

The CLI imports it from the working directory (or the module ``MAILSVC_SETTINGS_MODULE``
names) and ``asgi.py`` imports it; every setting, its default and its bounds are in
``mailsvc/settings.py``, read from the environment and ``.env``. Without a module like
this one the CLI runs on ``mailsvc.settings`` alone, which is how an installed wheel
runs from an empty directory.

Why a project keeps this file: ``MAILSVC_TEMPLATES`` defaults to the ``templates/``
folder beside it, wherever the process is started, so a checkout's own pages and
email templates win over the packaged ones without setting anything.
"""

from __future__ import annotations

from pathlib import Path

from mailsvc import settings as base
from mailsvc.config import ServiceConfig, env_field

__all__ = ["DIFFERS_FROM_MODEL", "Settings", "load_settings"]

_TEMPLATES = Path(__file__).resolve().parent / "templates"

# Settings whose environment form differs from the model field, and why (checked by the tests).
DIFFERS_FROM_MODEL = {
    **base.DIFFERS_FROM_MODEL,
    "MAILSVC_TEMPLATES": "the templates/ beside this file (when it exists), wherever the process is started",
}


class Settings(base.Settings):
    """mailsvc's settings with this project's template folder as the default ``MAILSVC_TEMPLATES``."""

    MAILSVC_TEMPLATES: Path | None = env_field(
        ServiceConfig, "templates", default=_TEMPLATES if _TEMPLATES.is_dir() else None
    )


def load_settings(**overrides: object) -> Settings:
    """Build Settings or exit with one line naming the bad setting (see ``mailsvc.settings.load_settings``)."""
    return base.build_settings(Settings, **overrides)
