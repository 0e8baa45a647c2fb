"""DKIM keys and signing (RFC 6376; rsa-sha256, and ed25519-sha256 per RFC 8463), over dkimpy.

Why here, below the build path: a message is signed once, when
:func:`mailsvc.envelopes.build_envelope` has written its bytes, so the outbox stores
signed bytes and every retry sends exactly those; the worker never signs. Keys are
read and parsed when the config is built (a bad key file stops start-up, naming the
setting) and cached by path, so signing a bulk send never touches the disk.

Key files: an RSA key in PEM (PKCS#1 or PKCS#8), an Ed25519 key in PEM (PKCS#8) or as
dkimpy's ``dknewkey`` writes it (the base64 32-byte seed on one line). The algorithm
follows from the key.

    >>> ring = Keyring({})
    >>> ring.sign(b"From: a@example.com\\r\\n\\r\\nhi\\r\\n", "example.com") is None
    True
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from .errors import ConfigError

__all__ = [
    "Algorithm",
    "DkimKey",
    "Keyring",
    "SIGNED_HEADERS",
    "dns_record",
    "generate_key",
    "keyring",
    "load_key",
    "load_keys_file",
]

Algorithm = Literal["rsa", "ed25519"]
# The headers a receiver checks, in the order they go in h=; those absent from a message are left out.
SIGNED_HEADERS = (
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"mime-version",
    b"content-type",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
)
_CANON = (b"relaxed", b"relaxed")
_SEED = re.compile(rb"\s*[A-Za-z0-9+/]{43}=\s*")  # 32 bytes in base64: dknewkey's ed25519 form
_HEADER_NAME = re.compile(rb"^([!-9;-~]+):", re.MULTILINE)  # field names at line starts (header block only)


@dataclass(frozen=True, slots=True)
class DkimKey:
    """One domain's signing key: what dkimpy signs with, and the public half for the DNS record."""

    domain: str
    selector: str
    algorithm: Algorithm
    private: bytes  # dkimpy's form: PKCS#1 PEM (rsa) or the base64 seed (ed25519)
    public: bytes  # base64, the p= of the DNS record
    rsa_key: rsa.RSAPrivateKey | None = field(default=None, compare=False, repr=False)  # OpenSSL signs with it

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def dns_record(self) -> str:
        return dns_record(self.algorithm, self.public)


def dns_record(algorithm: Algorithm, public_b64: bytes) -> str:
    """The TXT record to publish at ``selector._domainkey.domain``."""
    return f"v=DKIM1; k={algorithm}; p={public_b64.decode('ascii')}"


class Keyring:
    """The keys by From domain; :meth:`sign` returns the signed bytes, or None when the domain has no key."""

    def __init__(self, keys: Mapping[str, DkimKey]) -> None:
        self._keys = {d.lower(): k for d, k in keys.items()}

    def __bool__(self) -> bool:
        return bool(self._keys)

    @property
    def domains(self) -> frozenset[str]:
        return frozenset(self._keys)

    def key_for(self, domain: str) -> DkimKey | None:
        return self._keys.get(domain.lower().rstrip("."))

    def sign(self, data: bytes, from_domain: str) -> bytes | None:
        """``data`` with a DKIM-Signature header first, or None when ``from_domain`` has no key.

        From is oversigned (named once more than it occurs), so a second From cannot be added
        after signing; the other headers are signed when the message has them.
        """
        key = self.key_for(from_domain)
        if key is None:
            return None
        head = data.split(b"\r\n\r\n", 1)[0]
        present = {m.group(1).lower() for m in _HEADER_NAME.finditer(head)}
        include = [h for h in SIGNED_HEADERS if h in present] + [b"from"]
        dkim = _dkimpy()
        signer = (
            _openssl_rsa(data, key.rsa_key)
            if key.rsa_key is not None
            else dkim.DKIM(data, signature_algorithm=b"ed25519-sha256")
        )
        header = signer.sign(
            key.selector.encode("ascii"),
            key.domain.encode("ascii"),
            key.private,
            canonicalize=_CANON,
            include_headers=include,
        )
        return bytes(header) + data


@functools.cache
def _dkimpy() -> Any:
    """dkimpy, imported on first use: it imports dnspython's resolver and with it an HTTP/2 client
    (~160 ms), which every process paid at start (the service, its worker child, each CLI command)
    although only one that signs needs it."""
    import dkim

    return dkim


def _openssl_rsa(data: bytes, key: rsa.RSAPrivateKey) -> Any:
    """dkimpy's signer with one step swapped: the RSA private-key operation runs in OpenSSL.

    Why: dkimpy computes RSA in pure Python (``pow`` on 2048-bit numbers, ~6 ms a message),
    which capped signed bulk at ~150 msg/s; OpenSSL does it in a fraction of that. Everything
    a receiver recomputes (header selection, relaxed canonicalisation, body hash, folding,
    the b= blanking) stays dkimpy's own code: the signer's ``gen_header`` is replaced by
    :func:`_gen_header`, dkimpy 1.1's ``DKIM.gen_header`` with only the marked line changed
    (PKCS#1 v1.5 is deterministic, so ``tests/test_dkim.py`` checks the signature is byte for
    byte the one dkimpy makes).
    """
    signer = _dkimpy().DKIM(data, signature_algorithm=b"rsa-sha256")
    signer.gen_header = functools.partial(_gen_header, signer, key)
    return signer


def _gen_header(
    self: Any,
    key: rsa.RSAPrivateKey,
    fields: list[tuple[bytes, bytes]],
    include_headers: tuple[bytes, ...],
    canon_policy: Any,
    header_name: bytes,
    pk: object,
    standardize: bool = False,
) -> bytes:
    dkim = _dkimpy()
    header_value = dkim.fold(b"; ".join(b"=".join(x) for x in fields), namelen=len(header_name), linesep=b"\r\n")
    header_value = dkim.RE_BTAG.sub(b"\\1", header_value)
    h = self.hasher()
    headers = canon_policy.canonicalize_headers(self.headers)
    self.signed_headers = dkim.hash_headers(
        h, canon_policy, headers, include_headers, (header_name, b" " + header_value), dict(fields)
    )
    signature = key.sign(h.digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256()))  # the swapped line
    idx = [i for i, (tag, _) in enumerate(fields) if tag == b"b"][0]
    fields[idx] = (b"b", base64.b64encode(signature))
    header_value = b"; ".join(b"=".join(x) for x in fields) + self.linesep
    return bytes(dkim.fold(header_value, namelen=len(header_name), linesep=self.linesep))


def load_key(path: Path, domain: str, selector: str, setting: str) -> DkimKey:
    """Read and parse one key file, or raise :class:`ConfigError` naming ``setting`` and the file."""
    return _load_key(Path(path), domain.lower().rstrip("."), selector, setting)


@functools.lru_cache(maxsize=64)
def _load_key(path: Path, domain: str, selector: str, setting: str) -> DkimKey:
    _check_label("domain", domain, setting)
    _check_label("selector", selector, setting)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(setting, f"cannot read the DKIM key {path}: {exc.strerror or exc}") from None
    if _SEED.fullmatch(raw):
        seed = base64.b64decode(raw.strip())
        loaded: object = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    else:
        try:
            loaded = serialization.load_pem_private_key(raw, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                setting,
                f"{path} is not an unencrypted RSA or Ed25519 private key in PEM (or a base64 Ed25519 seed): {exc}",
            ) from None
    if isinstance(loaded, rsa.RSAPrivateKey):
        if loaded.key_size < 1024:
            raise ConfigError(setting, f"{path}: a {loaded.key_size}-bit RSA key is too short (use 2048)")
        private = loaded.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        public = loaded.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return DkimKey(domain, selector, "rsa", private, base64.b64encode(public), rsa_key=loaded)
    if isinstance(loaded, ed25519.Ed25519PrivateKey):
        seed = loaded.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        public = loaded.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return DkimKey(domain, selector, "ed25519", base64.b64encode(seed), base64.b64encode(public))
    raise ConfigError(setting, f"{path}: DKIM signs with RSA or Ed25519 keys, not {type(loaded).__name__}")


def _check_label(what: str, value: str, setting: str) -> None:
    """Domain and selector go into a header and a DNS name: letters, digits, dots, hyphens only."""
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.\-_]*[A-Za-z0-9])?", value):
        raise ConfigError(setting, f"{value!r} is not a valid DKIM {what}")


def load_keys_file(path: Path, setting: str) -> dict[str, DkimKey]:
    """``{"example.com": {"selector": "s1", "key_file": "keys/example.com.pem"}, ...}``; relative key
    paths are read from the JSON file's folder."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(setting, f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(setting, f"{path} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(setting, f'{path}: expected {{"domain": {{"selector": ..., "key_file": ...}}}}')
    keys = {}
    for domain, entry in doc.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("selector"), str) and entry.get("key_file")):
            raise ConfigError(setting, f'{path}: {domain!r} needs "selector" and "key_file" strings')
        key_path = Path(path).parent / str(entry["key_file"])
        keys[domain.lower().rstrip(".")] = load_key(key_path, domain, entry["selector"], f"{setting} ({domain})")
    return keys


@functools.lru_cache(maxsize=16)
def keyring(
    domain: str | None, selector: str | None, key_file: Path | None, keys_file: Path | None, names: tuple[str, str]
) -> Keyring:
    """The keys a config names (cached, so a config's keys are read once per process).

    ``names`` are the settings to blame: (the single key file's, the keys file's).
    """
    keys = load_keys_file(keys_file, names[1]) if keys_file is not None else {}
    if domain and selector and key_file is not None:
        key = load_key(key_file, domain, selector, names[0])
        if key.domain in keys:
            raise ConfigError(names[0], f"{key.domain} also has a key in {keys_file}: configure it in one place")
        keys[key.domain] = key
    return Keyring(keys)


def generate_key(algorithm: Algorithm) -> tuple[bytes, bytes]:
    """A new key: (private key in PEM, public key in base64 for the DNS record). RSA keys are 2048 bits."""
    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        public = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        private = ed25519.Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return pem, base64.b64encode(public)
