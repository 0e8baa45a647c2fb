"""Subcommands of ``mailsvc``; each module defines ``register(subparsers)`` and sets ``handler``."""
