"""Address parsing and header-safety checks shared by the message model and the web layer.

Why a module of its own: every input path (library call, JSON field, form field)
must apply exactly the same rules, and the rules are subtle (display names,
internationalised domains, header injection), so they live in one place.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.headerregistry import Address as _HeaderAddress
from email.utils import getaddresses
from typing import Literal

import idna
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES, EMAIL_MAX_LENGTH, LOCAL_PART_MAX_LENGTH

from .errors import AddressError, BadHeaderError, MessageError

__all__ = [
    "HEADER_LINE_PATTERN",
    "AddressLike",
    "AddressRules",
    "ParsedAddress",
    "check_header",
    "header_problem",
    "parse_address",
    "parse_address_list",
]

AddressLike = str | tuple[str, str]
# "permissive" (the default): what Flask-Mail sends, i.e. any syntactically valid address, including
# quoted local parts, IP literals and special-use or dotless domains (root@localhost, *.test, *.local).
# "deliverable": only addresses that can be delivered on the public internet (email_validator's rules).
# Header-injection checks apply under both.
AddressRules = Literal["permissive", "deliverable"]

# CR, LF, NUL and every other character str.splitlines() breaks on: the email package
# refuses them in headers, and some MUAs treat them as line ends.
_BAD_HEADER_CLASS = r"\r\n\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_BAD_HEADER_CHARS = re.compile(f"[{_BAD_HEADER_CLASS}]")
# The same rule as a JSON Schema (ECMA-262) pattern, for the OpenAPI document: one line, none of those characters.
HEADER_LINE_PATTERN = f"^[^{_BAD_HEADER_CLASS}]*$"
_ENCODED_WORD = re.compile(r"=\?[^?\s]*\?[bBqQ]\?[^?\s]*\?=")


def header_problem(value: str) -> str | None:
    """Why ``value`` is unsafe in a header, or None.

    Besides raw line breaks, RFC 2047 encoded-words are decoded: Python's email
    package (before 3.11.10, CVE-2024-6923) writes a decoded CR/LF back out raw,
    so ``=?utf-8?q?a=0D=0ABcc:...?=`` would inject a header.
    """
    if _BAD_HEADER_CHARS.search(value):
        return "must not contain CR, LF, NUL or other line-break characters (header injection)"
    if "=?" not in value:
        return None
    for m in _ENCODED_WORD.finditer(value):
        try:
            decoded = str(make_header(decode_header(m.group(0))))
        except (LookupError, ValueError, UnicodeError, HeaderParseError):
            return "contains an RFC 2047 encoded-word that does not decode; send plain Unicode text"
        if _BAD_HEADER_CHARS.search(decoded):
            return "contains an RFC 2047 encoded-word hiding a line break (header injection)"
    return None


def check_header(field: str, value: str) -> str:
    """Raise BadHeaderError naming ``field`` when ``value`` could inject headers or commands."""
    reason = header_problem(value)
    if reason:
        raise BadHeaderError(field, reason)
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
        return _header_form(self.display_name, self.envelope)


@functools.lru_cache(maxsize=1024)
def _header_form(display_name: str, envelope: str) -> str:
    """Cached: the stdlib's Address object costs more than the rest of a header line (same sender, every message)."""
    local, _, domain = envelope.rpartition("@")
    return str(_HeaderAddress(display_name=display_name, username=local, domain=domain))


def parse_address(value: AddressLike, field: str = "address", rules: AddressRules = "permissive") -> ParsedAddress:
    """Parse ``"Name <a@b.example>"``, ``"a@b.example"`` or ``("Name", "a@b.example")``.

    Results are cached (the parse is pure and :class:`ParsedAddress` immutable):
    a bulk send names the same sender in every message, and validating it costs
    more than building the message. Errors are not cached; they are raised again
    naming the caller's ``field``.

    >>> parse_address(("Zoë", "zoe@bücher.example")).envelope
    'zoe@xn--bcher-kva.example'
    """
    try:
        return _parse_cached(value, rules)
    except TypeError:  # unhashable, e.g. a tuple holding a list: nothing to cache, same checks
        return _parse(value, field, rules)
    except _Invalid as exc:
        raise exc.error_class(field, exc.reason) from exc.__cause__


class _Invalid(Exception):
    """An address error not yet tied to a field, so that the parse itself can be cached."""

    def __init__(self, error_class: type[MessageError], reason: str) -> None:
        self.error_class = error_class
        self.reason = reason


@functools.lru_cache(maxsize=4096, typed=True)
def _parse_cached(value: AddressLike, rules: AddressRules) -> ParsedAddress:
    try:
        return _parse(value, "", rules)
    except MessageError as exc:
        raise _Invalid(type(exc), exc.reason) from exc.__cause__


def _parse(value: AddressLike, field: str, rules: AddressRules) -> ParsedAddress:
    if isinstance(value, tuple):
        if len(value) != 2 or not all(isinstance(v, str) for v in value):
            raise AddressError(field, "a tuple address must be (display name, address)")
        name, addr = value
        check_header(field, name)
        check_header(field, addr)
    elif isinstance(value, str):
        check_header(field, value)
        if _PLAIN.fullmatch(value):  # what getaddresses would return; it costs more than the rest
            return _checked("", value, field, rules)
        parsed = getaddresses([value])
        if len(parsed) != 1 or not parsed[0][1]:
            raise AddressError(field, f"{value!r} is not one email address")
        name, addr = parsed[0]
        # getaddresses silently drops junk; insist the address really appears.
        if addr not in value:
            raise AddressError(field, f"{value!r} is not a valid email address")
    else:
        raise AddressError(field, f"expected a string or (name, address) tuple, got {type(value).__name__}")
    return _checked(name, addr, field, rules)


def _checked(name: str, addr: str, field: str, rules: AddressRules) -> ParsedAddress:
    """``addr`` validated by email_validator, its domain in IDNA form."""
    local, domain = _plain_address(addr.strip(), rules) or _validated(addr, field, rules)
    return ParsedAddress(display_name=name.strip(), envelope=f"{local}@{domain}", smtputf8=not local.isascii())


def _validated(addr: str, field: str, rules: AddressRules) -> tuple[str, str]:
    addr = addr.strip()
    try:
        checked = validate_email(addr, check_deliverability=False, allow_smtputf8=True)
        return checked.local_part, checked.ascii_domain
    except EmailNotValidError as exc:
        if rules == "deliverable":
            raise AddressError(field, f"{addr!r} is not a valid email address: {exc}") from exc
    # Permissive: the local part by email_validator's syntax rules (quoted allowed), the domain as a hostname.
    local, sep, domain = addr.rpartition("@")
    try:
        if not sep:
            raise EmailNotValidError("there is no @-sign")
        local = validate_email(
            f"{local}@example.com", check_deliverability=False, allow_smtputf8=True, allow_quoted_local=True
        ).local_part
        ascii_domain = _any_domain(domain)
    except EmailNotValidError as exc:
        raise AddressError(field, f"{addr!r} is not a valid email address: {exc}") from exc
    return local, ascii_domain


_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _any_domain(domain: str) -> str:
    """A syntactically valid host name (special-use and dotless ones included) or IP literal, in ASCII."""
    if domain.startswith("["):
        return validate_email(f"a@{domain}", check_deliverability=False, allow_domain_literal=True).ascii_domain
    try:
        ascii_domain = idna.encode(domain, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError) as exc:
        raise EmailNotValidError(f"the domain {domain!r} is not a valid host name ({exc})") from exc
    if len(ascii_domain) > 253 or not all(_LABEL.fullmatch(label) for label in ascii_domain.split(".")):
        raise EmailNotValidError(f"the domain {domain!r} is not a valid host name")
    return ascii_domain


# A dot-atom local part at an ASCII domain: what bulk recipients nearly always look like.
_LOCAL = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_PLAIN = re.compile(rf"({_LOCAL})@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)")


def _plain_address(addr: str, rules: AddressRules) -> tuple[str, str] | None:
    """(local part, ASCII domain) as ``validate_email`` returns them, for plain addresses only; else None.

    Why: each recipient of a bulk send is new, so the parse cache cannot help, and
    email_validator spends most of its time on the domain, which recipients share.
    Here a dot-atom local part (which email_validator returns unchanged unless it
    is a role name like ``postmaster`` that it lowercases) is paired with the
    cached verdict on the domain. Anything else, and any invalid domain, goes to
    ``validate_email`` itself, so its errors stay its own.
    """
    m = _PLAIN.fullmatch(addr)
    if m is None or len(addr) > EMAIL_MAX_LENGTH or "xn--" in addr.lower():  # IDNA: lengths differ once decoded
        return None
    local = m.group(1)
    if len(local) > LOCAL_PART_MAX_LENGTH or local.lower() in CASE_INSENSITIVE_MAILBOX_NAMES:
        return None
    domain = _ascii_domain(m.group(2), rules)
    return None if domain is None else (local, domain)


@functools.lru_cache(maxsize=1024)
def _ascii_domain(domain: str, rules: AddressRules) -> str | None:
    try:
        return validate_email(f"a@{domain}", check_deliverability=False, allow_smtputf8=True).ascii_domain
    except EmailNotValidError:
        if rules == "deliverable":
            return None
    try:
        return _any_domain(domain)
    except EmailNotValidError:
        return None


def parse_address_list(
    values: AddressLike | list[AddressLike] | tuple[AddressLike, ...] | None,
    field: str,
    rules: AddressRules = "permissive",
) -> list[ParsedAddress]:
    """Parse one address or a list of them; ``None`` is an empty list."""
    if values is None:
        return []
    if isinstance(values, str) or (
        isinstance(values, tuple)
        and len(values) == 2
        and all(isinstance(v, str) for v in values)
        and "@" not in values[0]
    ):
        values = [values]  # type: ignore[list-item]
    return [parse_address(v, f"{field}[{i}]", rules) for i, v in enumerate(values)]
