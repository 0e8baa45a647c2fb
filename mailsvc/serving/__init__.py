"""Serving the app under hypercorn with limits on slow and abusive clients (issue 13, findings 9 and 10).

Layout (one job per module)::

    options      hypercorn's timeouts and header limits from a ServiceConfig (also hypercorn_config.py's)
    throttle     a log line per interval, with a count, instead of one per event
    connections  a cap on open client connections (503 beyond it), fitted to the open-file limit
    loop         the event loop that applies the cap and logs accept() failures once per interval
    server       run(app, config, service): what ``mailsvc serve`` runs
"""

from __future__ import annotations

from .options import hypercorn_options
from .server import run

__all__ = ["hypercorn_options", "run"]
