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

import binascii
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
        and not any(name.lower() in _MANAGED for name in msg.extra_headers)
    )


def _header(name: str, value: str) -> str:
    """One header line as the stdlib's generator writes it."""
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


def _make_boundary(text: bytes) -> str:
    """``BytesGenerator._make_boundary(text)``: same random draw, same result, without compiling a regex.

    The stdlib compiles a fresh pattern for every boundary (each one is new), a
    tenth of a bulk send's CPU. The pattern can only match where ``--boundary``
    occurs, which for a random 19-digit token it practically never does; only
    then is the stdlib's own loop run, from the same token.
    """
    token = random.randrange(sys.maxsize)
    boundary = "=" * 15 + _BOUNDARY_FMT % token + "=="
    if b"--" + boundary.encode("ascii") not in text:
        return boundary
    b, counter = boundary, 0
    while re.search(("^--" + re.escape(b) + "(--)?$").encode("ascii"), text, re.MULTILINE):
        b, counter = f"{boundary}.{counter}", counter + 1
    return b


# Characters the stdlib's QP body map writes as themselves; "=" and everything else become =XX.
_QP_VERBATIM = "".join(chr(c) for c in range(256) if _QUOPRI_BODY_ENCODE_MAP[c] == chr(c))
_QP_QUOTED = re.compile(f"[^{re.escape(_QP_VERBATIM)}=]")
_QP_WS = frozenset(" \t")  # a line ending in one of these needs the stdlib's rule ("" is not in it)


def _encode_text(text: str) -> tuple[str, str]:
    """``email.contentmanager._encode_text(text, "utf-8", None, policy)``, with CRLF line ends.

    The same choice (7bit when every line is short ASCII, else quoted-printable
    or base64 by the stdlib's 10-line sniff) and the same bytes. The stdlib
    encodes quoted-printable twice (the sniff, then the whole body) and walks
    every line in Python; a QP line is independent of the others, so here each
    is translated once in C and only a line that needs a soft break or ends in
    whitespace goes through the stdlib's per-line rule (``_qp_line``).
    """
    lines = text.encode("utf-8").splitlines()
    if max(map(len, lines), default=0) <= _MAXLEN:
        body = b"\r\n".join(lines) + b"\r\n"
        if body.isascii():
            return "7bit", body.decode("ascii")
    latin = b"\n".join(lines).decode("latin-1")
    # Only "=" needs quoting in most bodies: a C replace instead of the per-character map.
    # (\r and \n are the only line-break characters the map keeps; the rest become =XX.)
    translated = latin.translate(_QUOPRI_BODY_ENCODE_MAP) if _QP_QUOTED.search(latin) else latin.replace("=", "=3D")
    quoted = [t if len(t) <= _MAXLEN and t[-1:] not in _QP_WS else _qp_line(t) for t in translated.split("\n")]
    sniff = b"\r\n".join(lines[:10]) + b"\r\n"
    sniff_qp_len = sum(map(len, quoted[:10])) + min(len(quoted), 10)  # "\n".join(...) + "\n"
    if sniff_qp_len > len(binascii.b2a_base64(sniff)):
        return "base64", _encode_base64(b"\r\n".join(lines) + b"\r\n", _MAXLEN).replace("\n", _NL)
    return "quoted-printable", ("\n".join(quoted) + "\n").replace("\n", _NL)


def _qp_line(line: str) -> str:
    """One translated line as ``quoprimime.body_encode(..., maxlinelen=78)`` writes it (soft breaks as \\n)."""
    if len(line) <= _MAXLEN and (not line or line[-1] not in " \t"):
        return line  # nearly every line: nothing to break, nothing to quote at the end
    # The stdlib's loop, verbatim but for the names (Lib/email/quoprimime.py, body_encode).
    pieces: list[str] = []
    start = 0
    laststart = len(line) - 1 - _MAXLEN
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


def _text_part(subtype: str, text: str) -> tuple[str, str]:
    """(content headers, body) of one text part, encoded by the stdlib's own heuristics."""
    cte, payload = _encode_text(text)
    headers = f'Content-Type: text/{subtype}; charset="utf-8"{_NL}Content-Transfer-Encoding: {cte}{_NL}'
    return headers, payload


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
        ph, pb = _text_part(subtype, content)
        return f"{ph}MIME-Version: 1.0{_NL}{_NL}{pb}"
    (_, text), (_, html) = parts  # fast_path_applies: no alternatives beyond these two
    (th, tb), (hh, hb) = _text_part("plain", text), _text_part("html", html)
    # As EmailMessage.add_alternative leaves it: the HTML part carries its own MIME-Version.
    inner = [f"{th}{_NL}{tb}", f"{hh}MIME-Version: 1.0{_NL}{_NL}{hb}"]
    boundary = _make_boundary("\r\n".join(inner).encode("ascii"))
    ctype = f'Content-Type: multipart/alternative;{_NL} boundary="{boundary}"{_NL}'
    if len(boundary) != 36:  # a collision suffix changes the folding: let the stdlib fold it
        ctype = _header("Content-Type", f'multipart/alternative; boundary="{boundary}"')
    sep = f"--{boundary}"
    return f"MIME-Version: 1.0{_NL}{ctype}{_NL}{sep}{_NL}{inner[0]}{_NL}{sep}{_NL}{inner[1]}{_NL}{sep}--{_NL}"
