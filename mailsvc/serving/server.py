"""``run(app, config, service)``: hypercorn in this process, with every limit of :mod:`mailsvc.serving`.

Why not ``hypercorn.asyncio.serve``: it opens its sockets inside, where the connection cap cannot tell them
from the dev inbox's. hypercorn's own worker does what is done here: open the sockets, then
``worker_serve(app, config, sockets=...)`` on a loop it made.
"""

from __future__ import annotations

import asyncio

from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config, Sockets
from hypercorn.typing import ASGIFramework
from hypercorn.utils import wrap_app

from ..config import ServiceConfig
from .connections import ConnectionCap, fit_to_open_files
from .loop import AcceptErrorLog, ListeningSocket, ServingLoop
from .options import apply_options

__all__ = ["run"]


def run(app: ASGIFramework, config: Config, service: ServiceConfig) -> None:
    """Serve ``app`` until SIGINT/SIGTERM with ``service``'s limits applied to ``config``."""
    apply_options(config, service)
    limit = fit_to_open_files(service.max_connections)
    made = config.create_sockets()
    adopt = ListeningSocket.adopt
    sockets = Sockets(
        [adopt(s) for s in made.secure_sockets], [adopt(s) for s in made.insecure_sockets], made.quic_sockets
    )
    loop = ServingLoop()
    loop.set_exception_handler(AcceptErrorLog())
    if limit:
        cap = ConnectionCap(limit)
        for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
            loop.cap(sock, cap)
    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        runner.run(worker_serve(wrap_app(app, config.wsgi_max_body_size, "asgi"), config, sockets=sockets))
