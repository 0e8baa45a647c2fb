"""Every aiosmtplib member that ``transports/pipelining.py`` and ``pipestream.py`` use beyond the public API exists.

Why: pipelining runs on aiosmtplib's own connection (its command lock, its reply
buffer and parser, its internal EHLO step), so an aiosmtplib release that moves
one of them would break delivery. ``pyproject.toml`` bounds aiosmtplib to the
major version these were checked against; this test says *which* member moved
when someone widens the bound (or a minor release changes one), instead of a
failure deep inside an SMTP exchange.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import aiosmtplib
import aiosmtplib.email
import aiosmtplib.protocol
import pytest
from aiosmtplib import SMTPResponse
from packaging.requirements import Requirement

import mailsvc.transports.pipelining as pipelining
import mailsvc.transports.pipestream as pipestream

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _moved(what: str) -> str:
    return (
        f"aiosmtplib {version('aiosmtplib')}: {what} is gone or changed; mailsvc/transports/pipelining.py "
        "relies on it. Adapt pipelining.py to this aiosmtplib (or set PIPELINING_ENABLED = False) before "
        "widening the aiosmtplib bound in pyproject.toml."
    )


@pytest.mark.parametrize(
    ("module", "name"),
    [
        (aiosmtplib.protocol, "COMMAND_INJECTION_REGEX"),
        (aiosmtplib.protocol, "MAX_RESPONSE_LENGTH"),
        (aiosmtplib.protocol, "PERIOD_REGEX"),
        (aiosmtplib.protocol, "normalize_message_line_endings"),
        (aiosmtplib.email, "quote_address"),
    ],
)
def test_module_level_helpers_exist(module: object, name: str) -> None:
    assert hasattr(module, name), _moved(f"{getattr(module, '__name__', module)}.{name}")


def test_helpers_behave_as_pipelining_expects() -> None:
    from aiosmtplib.protocol import (
        COMMAND_INJECTION_REGEX,
        MAX_RESPONSE_LENGTH,
        PERIOD_REGEX,
        normalize_message_line_endings,
    )

    assert isinstance(COMMAND_INJECTION_REGEX, re.Pattern) and COMMAND_INJECTION_REGEX.search(b"a\r\nb"), _moved(
        "protocol.COMMAND_INJECTION_REGEX (a bytes pattern matching control characters)"
    )
    assert PERIOD_REGEX.sub(b"..", b"a\r\n.b\r\n") == b"a\r\n..b\r\n", _moved("protocol.PERIOD_REGEX (dot-stuffing)")
    assert normalize_message_line_endings(b"a\nb\r\n") == b"a\r\nb\r\n", _moved(
        "protocol.normalize_message_line_endings"
    )
    assert isinstance(MAX_RESPONSE_LENGTH, int) and MAX_RESPONSE_LENGTH > 0, _moved("protocol.MAX_RESPONSE_LENGTH")
    assert aiosmtplib.email.quote_address("ann@example.com") == "<ann@example.com>", _moved("email.quote_address")


def test_smtp_client_members() -> None:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=9)
    assert inspect.iscoroutinefunction(getattr(aiosmtplib.SMTP, "_ehlo_or_helo_if_needed", None)), _moved(
        "SMTP._ehlo_or_helo_if_needed() (the EHLO step sendmail runs first)"
    )
    for name in ("protocol", "is_ehlo_or_helo_needed", "is_connected"):
        assert hasattr(smtp, name), _moved(f"SMTP.{name}")
    for name in ("supports_extension", "sendmail", "rset", "close"):
        assert callable(getattr(smtp, name, None)), _moved(f"SMTP.{name}()")


async def test_protocol_members() -> None:
    protocol = aiosmtplib.protocol.SMTPProtocol(loop=asyncio.get_running_loop())
    assert hasattr(protocol, "_command_lock"), _moved("SMTPProtocol._command_lock (the lock each command takes)")
    assert isinstance(getattr(protocol, "_buffer", None), bytearray), _moved(
        "SMTPProtocol._buffer (the bytearray replies are read from)"
    )
    assert callable(getattr(protocol, "_read_response_from_buffer", None)), _moved(
        "SMTPProtocol._read_response_from_buffer()"
    )
    # The reply reader swaps these two for instance attributes while a pipelined group is in flight.
    for name in ("data_received", "connection_lost"):
        assert callable(getattr(type(protocol), name, None)), _moved(f"SMTPProtocol.{name}()")
    assert hasattr(protocol, "__dict__"), _moved("SMTPProtocol instances with a __dict__ (no __slots__)")
    assert callable(getattr(protocol, "write", None)) and hasattr(protocol, "transport"), _moved(
        "SMTPProtocol.write() / .transport"
    )


async def test_reply_parser_reads_one_reply_at_a_time_from_the_buffer() -> None:
    protocol = aiosmtplib.protocol.SMTPProtocol(loop=asyncio.get_running_loop())
    protocol._buffer.extend(b"250-first\r\n250 second\r\n354 go on\r\n451 part")
    replies = [protocol._read_response_from_buffer() for _ in range(3)]
    assert replies == [SMTPResponse(250, "first\nsecond"), SMTPResponse(354, "go on"), None], _moved(
        "SMTPProtocol._read_response_from_buffer() (one complete reply per call, None when incomplete)"
    )
    assert bytes(protocol._buffer) == b"451 part", _moved("SMTPProtocol._read_response_from_buffer() consuming")


def test_pyproject_bounds_aiosmtplib_to_the_checked_major_version() -> None:
    deps = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["dependencies"]
    [req] = [Requirement(d) for d in deps if Requirement(d).name == "aiosmtplib"]
    installed = version("aiosmtplib")
    assert installed in req.specifier, f"aiosmtplib {installed} is outside pyproject's {req.specifier}"
    major = int(installed.split(".")[0])
    assert f"{major + 1}.0" not in req.specifier, (
        f"pyproject.toml lets aiosmtplib {major + 1} in ({req.specifier}); pipelining.py uses its private "
        "members, checked here only for the installed major version"
    )


def test_pipelining_still_imports_what_this_file_checks() -> None:
    """If pipelining.py or pipestream.py starts using another aiosmtplib internal, add it above."""
    source = Path(pipelining.__file__).read_text(encoding="utf-8")
    source += Path(pipestream.__file__).read_text(encoding="utf-8")
    used = set(re.findall(r"\b(?:smtp|protocol|p)\.(_[a-z]\w*)", source))
    assert used <= {"_ehlo_or_helo_if_needed", "_command_lock", "_buffer", "_read_response_from_buffer"}, used
