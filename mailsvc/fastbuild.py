"""Build the bytes of common messages without the stdlib's MIME object tree: same output, less CPU.

Why: ``Message.build`` assembles an ``EmailMessage`` (header objects, a parse tree
per header, ``set_content``/``add_alternative`` restructuring) and flattens it
again, ~3 ms of CPU per personalised newsletter, more than the whole SMTP
exchange. For the shape bulk mail nearly always has (a text part, an HTML part or
both, UTF-8, ASCII envelope, no attachments) this module writes the same bytes
directly: the header lines the stdlib would write when a value needs no
encoding or folding, the stdlib's own body encoder (``_encode_text``: the same
7bit / quoted-printable / base64 choice), and the stdlib's boundary (same random
draw, same collision rule).

What it does not do, it hands back: anything else (attachments, inline images,
extra alternatives, other charsets, SMTPUTF8, managed extra headers) goes to
``Message.build``, and any single header value that is not plain short ASCII is
folded by the stdlib's policy, exactly as the generator would fold it.
``tests/test_fastbuild.py`` holds both paths to the same bytes (same boundary
given the same random state) and the same parse.
"""

from __future__ import annotations

import random
import re
import sys
from email.contentmanager import _encode_base64  # type: ignore[attr-defined]
from email.quoprimime import _QUOPRI_BODY_ENCODE_MAP  # type: ignore[attr-defined]

from .addresses import AddressLike, AddressRules
from .message import _MANAGED, Message
from .mimewriter import POLICY_7BIT, mime_bytes
from .parts import BuildPlan, Envelope

__all__ = ["build", "fast_path_applies"]

_POLICY = POLICY_7BIT
_NL = "\r\n"
_REGISTRY = frozenset(_POLICY.header_factory.registry)  # type: ignore[attr-defined]  # names with structured parsers
_MAXLEN = _POLICY.max_line_length or 78

# Values the stdlib writes back verbatim: short printable ASCII with nothing to
# parse, quote, encode or fold. Anything else is folded by the stdlib.
_PLAIN_TEXT = re.compile(r"[!-~]+(?: [!-~]+)*")
_ATOM_ADDR = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_PLAIN_ADDRESS = re.compile(rf"(?:[A-Za-z0-9]+(?: [A-Za-z0-9]+)* <{_ATOM_ADDR}>|{_ATOM_ADDR})")
_PLAIN_ADDRESSES = re.compile(rf"{_PLAIN_ADDRESS.pattern}(?:, {_PLAIN_ADDRESS.pattern})*")
_PLAIN_MSGID = re.compile(rf"<{_ATOM_ADDR}>")
_PLAIN_DATE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (?:0[1-9]|[12]\d|3[01]) "
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d [+-]\d{4}"
)
_ADDRESS_HEADERS = {"from", "to", "cc", "reply-to"}
_BOUNDARY_FMT = f"%0{len(repr(sys.maxsize - 1))}d"  # as email.generator formats its token


def fast_path_applies(msg: Message) -> bool:
    """True for the shapes this module writes itself; others go to ``Message.build``."""
    return (
        not msg.attachments
        and not msg.alts
        and (msg.charset is None or msg.charset.lower() == "utf-8")
        and not (msg.extra_headers and any(name.lower() in _MANAGED for name in msg.extra_headers))
    )


# Header lines of values that repeat across a bulk send (From, Date within its second): written once each.
_REPEATED = frozenset({"From", "Date", "Reply-To", "Sender"})
_repeated_lines: dict[tuple[str, str], str] = {}


def _header(name: str, value: str) -> str:
    """One header line as the stdlib's generator writes it."""
    if (line := _repeated_lines.get((name, value))) is not None:
        return line
    line = _header_line(name, value)
    if name in _REPEATED:
        if len(_repeated_lines) >= 256:  # a new Date every second: bounded, not an LRU
            _repeated_lines.clear()
        _repeated_lines[name, value] = line
    return line


def _header_line(name: str, value: str) -> str:
    lname = name.lower()
    if len(name) + 2 + len(value) <= _MAXLEN and "=?" not in value:
        if lname in _ADDRESS_HEADERS:
            plain = _PLAIN_ADDRESSES.fullmatch(value) is not None
        elif lname == "message-id":
            plain = _PLAIN_MSGID.fullmatch(value) is not None
        elif lname == "date":
            plain = _PLAIN_DATE.fullmatch(value) is not None
        elif lname == "subject" or lname not in _REGISTRY:
            plain = _PLAIN_TEXT.fullmatch(value) is not None
        else:
            plain = False
        if plain:
            return f"{name}: {value}{_NL}"
    return _POLICY.fold_binary(name, _POLICY.header_store_parse(name, value)[1]).decode("ascii")


def _make_boundary(text: bytes | str) -> str:
    """``BytesGenerator._make_boundary(text)``: same random draw, same result, without compiling a regex.

    The stdlib compiles a fresh pattern for every boundary (each one is new), a
    tenth of a bulk send's CPU. The pattern can only match where ``--boundary``
    occurs, which for a random 19-digit token it practically never does; only
    then is the stdlib's own loop run, from the same token. ``text`` may be the
    ASCII parts as a string (no bytes copy for the check).
    """
    # random.randrange(sys.maxsize) draws exactly this (CPython's _randbelow_with_getrandbits), minus two calls.
    token = random.getrandbits(_TOKEN_BITS)
    while token >= sys.maxsize:
        token = random.getrandbits(_TOKEN_BITS)
    boundary = "=" * 15 + _BOUNDARY_FMT % token + "=="
    if isinstance(text, str):
        if "--" + boundary not in text:
            return boundary
        text = text.encode("ascii")
    elif b"--" + boundary.encode("ascii") not in text:
        return boundary
    b, counter = boundary, 0
    while re.search(("^--" + re.escape(b) + "(--)?$").encode("ascii"), text, re.MULTILINE):
        b, counter = f"{boundary}.{counter}", counter + 1
    return b


_TOKEN_BITS = sys.maxsize.bit_length()
_QP_WS = frozenset(" \t")  # a line ending in one of these needs the stdlib's rule ("" is not in it)
# Printable ASCII and LF: a body of nothing else needs only its "=" quoted (deleting these leaves nothing).
_PRINTABLE_LINES = bytes(range(0x20, 0x7F)) + b"\n"


def _encode_text(text: str) -> tuple[str, str]:
    """``email.contentmanager._encode_text(text, "utf-8", None, policy)``, with CRLF line ends.

    The same choice (7bit when every line is short ASCII, else quoted-printable
    or base64 by the stdlib's 10-line sniff) and the same bytes. The stdlib
    encodes quoted-printable twice (the sniff, then the whole body) and walks
    every character and line in Python. Here the UTF-8 bytes are read as Latin-1
    (one character per byte, as ``body_encode`` reads them) and quoted in C: a
    ``replace`` when ``=`` is the only character the QP map would change (plain
    printable ASCII, the usual body), else the map itself. A QP line is
    independent of the others, so only one longer than 78 or ending in
    whitespace goes through the stdlib's per-line rule (``_qp_line``), and the
    sniff's two lengths are counted rather than encoded.
    """
    if "\r" in text:  # bytes.splitlines() also breaks at CR and CRLF: after this "\n" is the only break
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    ascii_text = text.isascii()
    latin = text if ascii_text else text.encode("utf-8").decode("latin-1")
    last_empty = not latin or latin.endswith("\n")  # splitlines() gives no empty last line
    lines = latin.split("\n")
    if last_empty:
        lines.pop()
    if ascii_text and max(map(len, lines), default=0) <= _MAXLEN:
        return "7bit", "\r\n".join(lines) + "\r\n"
    if ascii_text and not latin.encode("ascii").translate(None, _PRINTABLE_LINES):
        translated = latin.replace("=", "=3D").split("\n")  # only "=" is quoted in printable ASCII
    else:
        translated = latin.translate(_QUOPRI_BODY_ENCODE_MAP).split("\n")  # \n is kept, nothing else makes one
    if last_empty:
        translated.pop()
    quoted = [t if len(t) <= _MAXLEN and t[-1:] not in _QP_WS else _qp_line(t) for t in translated]
    # The stdlib's sniff: the first 10 lines as QP ("\n" after each) against base64 of their bytes with CRLFs.
    n = min(len(lines), 10)
    sniff_qp_len = sum(map(len, quoted[:n])) + n
    sniff_base64_len = (sum(map(len, lines[:n])) + 2 * n + 2) // 3 * 4 + 1  # len(binascii.b2a_base64(sniff))
    if sniff_qp_len > sniff_base64_len:
        return "base64", _encode_base64(("\r\n".join(lines) + "\r\n").encode("latin-1"), _MAXLEN).replace("\n", _NL)
    return "quoted-printable", ("\n".join(quoted) + "\n").replace("\n", _NL)


def _qp_line(line: str) -> str:
    """One translated line as ``quoprimime.body_encode(..., maxlinelen=78)`` writes it (soft breaks as \\n)."""
    size = len(line)
    if size > _MAXLEN and line[-1] not in " \t":  # the usual long line: one soft break, never inside an =XX
        cut = 75 if line[75] == "=" else 76 if line[76] == "=" else 77
        if size - cut <= _MAXLEN:
            return f"{line[:cut]}=\n{line[cut:]}"
    elif size <= _MAXLEN and (not line or line[-1] not in " \t"):
        return line  # nothing to break, nothing to quote at the end
    # The stdlib's loop, verbatim but for the names (Lib/email/quoprimime.py, body_encode).
    pieces: list[str] = []
    start = 0
    laststart = size - 1 - _MAXLEN
    while start <= laststart:
        stop = start + _MAXLEN - 1
        if line[stop - 2] == "=":
            pieces.append(line[start : stop - 1])
            start = stop - 2
        elif line[stop - 1] == "=":
            pieces.append(line[start:stop])
            start = stop - 1
        else:
            pieces.append(line[start:stop] + "=")
            start = stop
    pieces.append(
        line[start:-1] + _qp_trailing_space(line[-1], start - laststart) if line[-1] in " \t" else line[start:]
    )
    return "\n".join(pieces)


def _qp_trailing_space(char: str, room: int) -> str:
    """The stdlib's ending for a line whose last character is a space or tab, given the room left on it."""
    if room >= 3:
        return f"={ord(char):02X}"
    if room == 2:
        return char + "=\n"
    return f"=\n={ord(char):02X}"


def _text_part(subtype: str, text: str) -> tuple[str, str, bool]:
    """(content headers, body, whether the body is 7bit) of one text part, encoded by the stdlib's own heuristics."""
    cte, payload = _encode_text(text)
    headers = f'Content-Type: text/{subtype}; charset="utf-8"{_NL}Content-Transfer-Encoding: {cte}{_NL}'
    return headers, payload, cte == "7bit"


def build(
    msg: Message,
    *,
    default_sender: AddressLike | None = None,
    msgid_domain: str | None = None,
    ascii_attachments: bool = False,
    address_rules: AddressRules = "permissive",
) -> Envelope:
    """``msg.build(...)``'s envelope, with the bytes written directly when the shape allows."""
    if not fast_path_applies(msg):
        return msg.build(
            default_sender=default_sender,
            msgid_domain=msgid_domain,
            ascii_attachments=ascii_attachments,
            address_rules=address_rules,
        )
    plan = msg.plan(
        default_sender=default_sender,
        msgid_domain=msgid_domain,
        ascii_attachments=ascii_attachments,
        address_rules=address_rules,
    )
    return plan.envelope(mime_bytes(plan) if plan.smtputf8 else write(plan))


def write(plan: BuildPlan) -> bytes:
    """The plan's headers, then its text and/or HTML part, as the stdlib's generator would write them."""
    lines = [_header(name, value) for name, value in plan.headers]
    lines.append(_body(plan.parts))
    return "".join(lines).encode("ascii")


def _body(parts: tuple[tuple[str, str], ...]) -> str:
    """MIME-Version, the content headers and the body: one text part, or text and HTML as alternatives."""
    if len(parts) == 1:
        [(subtype, content)] = parts
        ph, pb, _ = _text_part(subtype, content)
        return f"{ph}MIME-Version: 1.0{_NL}{_NL}{pb}"
    (_, text), (_, html) = parts  # fast_path_applies: no alternatives beyond these two
    (th, tb, t7), (hh, hb, h7) = _text_part("plain", text), _text_part("html", html)
    # As EmailMessage.add_alternative leaves it: the HTML part carries its own MIME-Version.
    inner = [f"{th}{_NL}{tb}", f"{hh}MIME-Version: 1.0{_NL}{_NL}{hb}"]
    # The boundary opens with "==" and only a 7bit body can hold that: in quoted-printable "=" is always
    # followed by hex digits or a line break, base64 pads with at most two "=" before a line break, and
    # the part headers are ours. So only 7bit bodies are searched (a substring search costs ~4 us per message).
    boundary = _make_boundary(f"{tb if t7 else ''}{_NL}{hb if h7 else ''}")
    ctype = f'Content-Type: multipart/alternative;{_NL} boundary="{boundary}"{_NL}'
    if len(boundary) != 36:  # a collision suffix changes the folding: let the stdlib fold it
        ctype = _header("Content-Type", f'multipart/alternative; boundary="{boundary}"')
    sep = f"--{boundary}"
    return f"MIME-Version: 1.0{_NL}{ctype}{_NL}{sep}{_NL}{inner[0]}{_NL}{sep}{_NL}{inner[1]}{_NL}{sep}--{_NL}"
