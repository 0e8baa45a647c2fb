"""``mailsvc`` command line: one module per subcommand under ``mailsvc/commands/``.

Settings come from the project's ``settings.py`` (found in the working directory,
or named by ``MAILSVC_SETTINGS_MODULE``, as Django does with its settings module),
so the CLI sees exactly the configuration the service sees.

Exit codes: 0 success, 1 operation failed, 2 usage or configuration error,
3 not found.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import pkgutil
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["load_project_settings", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND = 0, 1, 2, 3


def load_project_settings() -> Any:
    """Import the project's settings module and build its Settings (exits 2 on a bad setting).

    Without ``MAILSVC_SETTINGS_MODULE`` and without a ``settings.py`` in the working
    directory, mailsvc's own :mod:`mailsvc.settings` applies (the environment and
    ``.env`` only), so an installed wheel runs from any directory.
    """
    name = os.environ.get("MAILSVC_SETTINGS_MODULE")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(name or "settings")
    except ModuleNotFoundError as exc:
        if name is not None or exc.name != "settings":
            print(
                f"mailsvc: cannot import settings module {name or 'settings'!r}: {exc}; run from the project "
                "folder or set MAILSVC_SETTINGS_MODULE",
                file=sys.stderr,
            )
            raise SystemExit(EXIT_USAGE) from None
        module = importlib.import_module("mailsvc.settings")
    try:
        return module.load_settings()
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _version() -> str:
    try:
        return importlib.metadata.version("mailsvc")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailsvc", description="Durable, asyncio-first email service.")
    parser.add_argument("--version", action="version", version=f"mailsvc {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from . import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
