"""One-click unsubscribe links (RFC 8058): signed tokens naming who, for which tenant, from which stream.

Why signed and not stored: a batch of 100,000 messages needs 100,000 links, and the link must
keep working for as long as the mail sits in an inbox. The token carries its own claim, signed
with ``MAILSVC_SECRET_KEY`` (HMAC-SHA1 over the payload by :mod:`itsdangerous`, under a salt of
its own, so a session cookie is never a valid token nor the reverse). Altering any byte, or
swapping in another address, breaks the signature; a token names exactly the addresses it may
unsubscribe, so it cannot be replayed for anyone else. Tokens do not expire: an unsubscribe
link must work as long as the message can be read.

>>> signer = UnsubscribeSigner("s3cret")
>>> claim = signer.verify(signer.sign(Claim("t1", ("ann@example.com",), "news")))
>>> claim.addresses, claim.stream
(('ann@example.com',), 'news')
>>> signer.verify("x" + signer.sign(claim)) is None
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadData, URLSafeSerializer

from ..addresses import parse_address
from ..config import WebConfig
from .problems import FieldError, ProblemException

__all__ = ["ONE_CLICK", "Claim", "UnsubscribeLinks", "UnsubscribeSigner", "links_for"]

#: RFC 8058's List-Unsubscribe-Post value, and the body a mailbox provider POSTs.
ONE_CLICK = "List-Unsubscribe=One-Click"
_OUR_HEADERS = ("list-unsubscribe", "list-unsubscribe-post")

_SALT = "mailsvc.unsubscribe.v1"
_MAX_TOKEN = 4000  # characters; a longer path segment is not one we minted


@dataclass(frozen=True, slots=True)
class Claim:
    """What a token lets its holder do: suppress ``addresses`` on ``stream`` for ``tenant`` (None: no tenant)."""

    tenant: str | None
    addresses: tuple[str, ...]
    stream: str


class UnsubscribeSigner:
    """Signs and checks tokens with one secret (the service's ``MAILSVC_SECRET_KEY``)."""

    def __init__(self, secret: str) -> None:
        self._serializer = URLSafeSerializer(secret, salt=_SALT)

    def sign(self, claim: Claim) -> str:
        return str(self._serializer.dumps([claim.tenant, list(claim.addresses), claim.stream]))

    def verify(self, token: str) -> Claim | None:
        """The token's claim, or None when it is not one this secret signed (forged, altered, truncated)."""
        if len(token) > _MAX_TOKEN:
            return None
        try:
            data: Any = self._serializer.loads(token)
        except BadData:
            return None
        return _claim(data)


def _claim(data: Any) -> Claim | None:
    """A well-formed claim from signed data (signed by us, so only another version's shape can be wrong)."""
    if not (isinstance(data, list) and len(data) == 3):
        return None
    tenant, addresses, stream = data
    if not (tenant is None or isinstance(tenant, str)) or not isinstance(stream, str):
        return None
    if not isinstance(addresses, list) or not addresses or not all(isinstance(a, str) for a in addresses):
        return None
    return Claim(tenant, tuple(addresses), stream)


@dataclass(frozen=True, slots=True)
class UnsubscribeLinks:
    """A request's links: one per message, naming its ``to`` addresses, the tenant and the stream."""

    base: str  # MAILSVC_PUBLIC_URL, without a trailing slash
    signer: UnsubscribeSigner
    tenant: str | None
    stream: str

    def url(self, to: Sequence[str]) -> str:
        """The link for a message to ``to`` (envelope forms: what the outbox stores and suppresses)."""
        addresses = tuple(dict.fromkeys(parse_address(a).envelope for a in to))
        return f"{self.base}/unsubscribe/{self.signer.sign(Claim(self.tenant, addresses, self.stream))}"

    @staticmethod
    def headers(url: str) -> dict[str, str]:
        """RFC 8058: the HTTPS link (no mailto: this service has no mailbox to receive one) and One-Click."""
        return {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": ONE_CLICK}


def links_for(
    web: WebConfig, wanted: bool | None, headers: Mapping[str, str], tenant: str | None, stream: str
) -> UnsubscribeLinks | None:
    """Whether a request's messages carry our links; 422 when it asks for them and they cannot be made.

    ``wanted`` None (a bulk request that did not say): on when ``MAILSVC_PUBLIC_URL`` is set and the
    request brings no List-Unsubscribe header of its own (whose link is then the sender's business).
    """
    own = sorted(h for h in headers if h.lower() in _OUR_HEADERS)
    if wanted is False or (wanted is None and (own or web.public_url is None)):
        return None
    if web.public_url is None or web.secret_key is None:
        reason = "this service has no MAILSVC_PUBLIC_URL, the base of one-click unsubscribe links; ask its operator"
        raise ProblemException(
            422, "unsubscribe links cannot be made", errors=[FieldError(field="unsubscribe", reason=reason)]
        )
    if own:
        reason = "set by the service when unsubscribe is true; leave it out, or send unsubscribe: false"
        raise ProblemException(
            422,
            "the request sets its own unsubscribe headers",
            errors=[FieldError(field=f"headers.{h}", reason=reason) for h in own],
        )
    return UnsubscribeLinks(web.public_url, UnsubscribeSigner(web.secret_key.get_secret_value()), tenant, stream)
