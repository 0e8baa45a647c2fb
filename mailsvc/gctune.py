"""The collector tuned for a service process: ``mailsvc serve``, ``hypercorn asgi:app``, ``mailsvc worker``.

Why: CPython runs a young-generation collection every 700 net allocations of container objects, and
every few of those walks the older generations too, which hold the whole imported app (Quart,
pydantic's schemas, Jinja2's templates): tens of thousands of objects that will live as long as the
process. A single POST allocates a few hundred containers and a bulk delivery thousands per message
batch, so the collector ran several times per request. :func:`tune_for_service` moves what exists at
startup out of its reach (:func:`gc.freeze`, as the CPython docs advise for servers) and collects the
young generation every 20,000 allocations instead of 700. Reference counting still frees nearly
everything at once; only cyclic garbage waits a little longer.

Never called by the library (``Mail``, ``send_many``): an embedding application owns its collector.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "tune_for_service"]

YOUNG_THRESHOLD = 20_000


def tune_for_service() -> None:
    """Freeze what startup built and collect the young generation less often; call once the app is built."""
    gc.collect()  # what startup left as garbage goes now, not into the permanent generation
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
