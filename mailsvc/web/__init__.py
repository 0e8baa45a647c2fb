"""Placeholder: filled in by its issue."""

from __future__ import annotations

from quart import Quart

from ..config import ServiceConfig


def register(app: Quart, service: ServiceConfig) -> None:
    """Attach this part's routes and lifespan hooks to ``app``."""
