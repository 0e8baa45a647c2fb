"""hypercorn's limits from the project's settings: ``hypercorn --config python:hypercorn_config asgi:app``.

Why a module: hypercorn reads its config before it imports the app, and ``asgi.py`` cannot reach it. With
this module ``hypercorn asgi:app`` gets the same timeouts and header limit as ``mailsvc serve``
(``MAILSVC_KEEP_ALIVE_TIMEOUT``, ``MAILSVC_READ_TIMEOUT``, ``MAILSVC_MAX_HEADER_BYTES``; the body's limits are
the app's own). The connection cap and the throttled accept-error log need ``mailsvc serve``'s event loop.
"""

from mailsvc.serving import hypercorn_options
from settings import load_settings

globals().update(hypercorn_options(load_settings().service_config()))
del hypercorn_options, load_settings  # hypercorn reads every name defined here as a setting
