"""Address parsing and header-safety checks shared by the message model and the web layer.

Why a module of its own: every input path (library call, JSON field, form field)
must apply exactly the same rules, and the rules are subtle (display names,
internationalised domains, header injection), so they live in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.headerregistry import Address as _HeaderAddress
from email.utils import getaddresses

from email_validator import EmailNotValidError, validate_email

from .errors import AddressError, BadHeaderError

__all__ = ["AddressLike", "ParsedAddress", "check_header", "parse_address", "parse_address_list"]

AddressLike = str | tuple[str, str]

_BAD_HEADER_CHARS = re.compile(r"[\r\n\x00]")


def check_header(field: str, value: str) -> str:
    """Reject CR, LF and NUL, the characters that let a value inject headers or commands."""
    if _BAD_HEADER_CHARS.search(value):
        raise BadHeaderError(field)
    return value


@dataclass(frozen=True, slots=True)
class ParsedAddress:
    """An address checked once: ``envelope`` goes on the wire, ``header`` in the message.

    ``envelope`` has its domain in IDNA (``xn--``) form so that servers without
    SMTPUTF8 accept it; ``smtputf8`` is set only when the local part itself is
    not ASCII and the server must support SMTPUTF8.
    """

    display_name: str
    envelope: str
    smtputf8: bool

    @property
    def header(self) -> str:
        """RFC 5322 form, quoting the display name when needed (encoding is the MIME layer's job)."""
        if not self.display_name:
            return self.envelope
        local, _, domain = self.envelope.rpartition("@")
        return str(_HeaderAddress(display_name=self.display_name, username=local, domain=domain))


def parse_address(value: AddressLike, field: str = "address") -> ParsedAddress:
    """Parse ``"Name <a@b.example>"``, ``"a@b.example"`` or ``("Name", "a@b.example")``.

    >>> parse_address(("Zoë", "zoe@bücher.example")).envelope
    'zoe@xn--bcher-kva.example'
    """
    if isinstance(value, tuple):
        if len(value) != 2 or not all(isinstance(v, str) for v in value):
            raise AddressError(field, "a tuple address must be (display name, address)")
        name, addr = value
        check_header(field, name)
        check_header(field, addr)
    elif isinstance(value, str):
        check_header(field, value)
        parsed = getaddresses([value])
        if len(parsed) != 1 or not parsed[0][1]:
            raise AddressError(field, f"{value!r} is not one email address")
        name, addr = parsed[0]
        # getaddresses silently drops junk; insist the address really appears.
        if addr not in value:
            raise AddressError(field, f"{value!r} is not a valid email address")
    else:
        raise AddressError(field, f"expected a string or (name, address) tuple, got {type(value).__name__}")
    try:
        checked = validate_email(addr.strip(), check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise AddressError(field, f"{addr!r} is not a valid email address: {exc}") from exc
    domain = checked.ascii_domain
    local = checked.local_part
    return ParsedAddress(
        display_name=name.strip(),
        envelope=f"{local}@{domain}",
        smtputf8=not local.isascii(),
    )


def parse_address_list(values: AddressLike | list[AddressLike] | tuple[AddressLike, ...] | None, field: str) -> list[ParsedAddress]:
    """Parse one address or a list of them; ``None`` is an empty list."""
    if values is None:
        return []
    if isinstance(values, str) or (isinstance(values, tuple) and len(values) == 2 and all(isinstance(v, str) for v in values) and "@" not in values[0]):
        values = [values]  # type: ignore[list-item]
    return [parse_address(v, f"{field}[{i}]") for i, v in enumerate(values)]
