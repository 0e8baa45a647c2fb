"""VERP return paths: ``bounces+<token>@<bounce domain>``, one per message and recipient, signed.

Why VERP: a bounce comes back to the envelope sender (MAIL FROM), days later, in whatever format
the remote MTA likes; which of our messages and which recipient it is about is then read from the
address it was sent to, not guessed from its text. Why signed: the listener writes what a bounce
says (a recipient ``bounced``, the address suppressed), so nobody may mint an address for a
message and recipient of their choosing.

The token is lower-case base32 (letters and digits only, safe in any local part and unchanged by an
MTA that folds case) of the message's 16-byte id and an 80-bit HMAC-SHA256 (key: ``MAILSVC_SECRET_KEY``,
under a label of its own) over the id and the recipient's lower-cased address: 42 characters, a
50-character local part (RFC 5321 allows 64). The recipient is not in the token; the listener finds
it by checking the MAC against each recipient of the message, so no position or address leaks.

>>> rp = ReturnPath("s3cret", "bounce.example.com")
>>> address = rp.address("0123456789abcdef0123456789abcdef", "Ann@example.com")
>>> len(address.partition("@")[0]), address.endswith("@bounce.example.com")
(50, True)
>>> claim = rp.parse(address.upper())
>>> claim is not None and claim.message_id
'0123456789abcdef0123456789abcdef'
>>> rp.matches(claim, "ann@example.com"), rp.matches(claim, "bob@example.com")
(True, False)
>>> rp.parse("bounces+" + "a" * 42 + "@elsewhere.example") is None
True
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

__all__ = ["LOCAL_PREFIX", "ReturnPath", "TokenClaim"]

LOCAL_PREFIX = "bounces+"
_LABEL = b"mailsvc.verp.v1\x00"
_ID_BYTES = 16  # a uuid4, the outbox's message ids (32 hex digits)
_MAC_BYTES = 10
_TOKEN_CHARS = 42  # base32 of 26 bytes, unpadded


@dataclass(frozen=True, slots=True)
class TokenClaim:
    """What a well-formed token names: the message, and a MAC still to be matched to one of its recipients."""

    message_id: str
    mac: bytes


class ReturnPath:
    """Mints and reads the VERP addresses of one bounce domain under one secret."""

    def __init__(self, secret: str, domain: str) -> None:
        self._key = hashlib.sha256(_LABEL + secret.encode("utf-8")).digest()
        self.domain = domain.lower().rstrip(".")

    def _mac(self, id_bytes: bytes, recipient: str) -> bytes:
        msg = id_bytes + b"\x00" + recipient.lower().encode("utf-8", "surrogatepass")
        return hmac.new(self._key, msg, hashlib.sha256).digest()[:_MAC_BYTES]

    def address(self, message_id: str, recipient: str) -> str:
        """The envelope sender for ``recipient``'s copy of the outbox message ``message_id``."""
        id_bytes = bytes.fromhex(message_id)
        if len(id_bytes) != _ID_BYTES:
            raise ValueError(f"not an outbox message id: {message_id!r}")
        token = base64.b32encode(id_bytes + self._mac(id_bytes, recipient)).decode("ascii").rstrip("=").lower()
        return f"{LOCAL_PREFIX}{token}@{self.domain}"

    def parse(self, address: str) -> TokenClaim | None:
        """The claim of a ``bounces+<token>@<our domain>`` address; None for any other address."""
        local, at, domain = address.strip().strip("<>").rpartition("@")
        if not at or domain.lower().rstrip(".") != self.domain or not local.lower().startswith(LOCAL_PREFIX):
            return None
        token = local[len(LOCAL_PREFIX) :].upper()
        if len(token) != _TOKEN_CHARS or not token.isascii() or not token.isalnum():
            return None
        try:
            raw = base64.b32decode(token + "=" * (-len(token) % 8))
        except (binascii.Error, ValueError):
            return None
        if base64.b32encode(raw).decode("ascii").rstrip("=") != token:  # non-zero padding bits: not one we minted
            return None
        return TokenClaim(raw[:_ID_BYTES].hex(), raw[_ID_BYTES:])

    def matches(self, claim: TokenClaim, recipient: str) -> bool:
        """Whether the claim's MAC was minted for ``recipient`` of its message (constant-time compare)."""
        return hmac.compare_digest(claim.mac, self._mac(bytes.fromhex(claim.message_id), recipient))
