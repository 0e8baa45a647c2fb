"""hypercorn's limits on slow clients, from a :class:`~mailsvc.config.ServiceConfig`.

Why one function: ``mailsvc serve`` and ``hypercorn --config python:hypercorn_config asgi:app`` must not
drift apart. What each bounds (hypercorn 0.18, HTTP/1.1 through h11):

- ``keep_alive_timeout``: hypercorn's idle timer runs from the moment a connection opens (or its last answer
  ends) until a request's headers are complete, so it also bounds a client that dribbles its headers.
- ``read_timeout``: the longest a connection may send nothing, *including* while its request is being
  answered (a timed-out read ends the request with no answer), hence a backstop longer than any answer
  (ServiceConfig refuses one shorter than the render budget).
- ``h11_max_incomplete_size`` / ``h2_max_header_list_size``: the request line and headers (431 beyond).

The body is bounded elsewhere: its size by Quart's ``MAX_CONTENT_LENGTH`` (413), its time by Quart's
``BODY_TIMEOUT`` (408), both set by ``web.register``.
"""

from __future__ import annotations

from typing import Any

from hypercorn.config import Config

from ..config import ServiceConfig

__all__ = ["apply_options", "hypercorn_options"]


def hypercorn_options(service: ServiceConfig) -> dict[str, Any]:
    """hypercorn ``Config`` attributes, by name (what a ``--config python:`` module defines).

    >>> hypercorn_options(ServiceConfig())["h11_max_incomplete_size"]
    16384
    """
    return {
        "keep_alive_timeout": service.keep_alive_timeout,
        "read_timeout": service.read_timeout,
        "h11_max_incomplete_size": service.max_header_bytes,
        "h2_max_header_list_size": service.max_header_bytes,
    }


def apply_options(config: Config, service: ServiceConfig) -> Config:
    for name, value in hypercorn_options(service).items():
        setattr(config, name, value)
    return config
