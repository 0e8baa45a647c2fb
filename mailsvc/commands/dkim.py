"""``mailsvc dkim keygen|check``: make a DKIM key and its DNS record; check the published record against the key.

Why in the CLI: the key and the record must match, and a receiver only says so by
putting mail in spam. ``keygen`` writes both halves at once; ``check`` asks DNS what
receivers will see before any mail goes out.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

__all__ = ["lookup_txt", "record_matches", "register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dkim",
        help="make a DKIM key pair, check its DNS record",
        description="DKIM keys: `keygen` writes a key pair and prints the TXT record to publish; "
        "`check` looks up the record of each configured key and says whether it matches.",
    )
    actions = p.add_subparsers(dest="dkim_action", required=True)
    gen = actions.add_parser("keygen", help="write a key pair and print the DNS TXT record")
    gen.add_argument("--domain", required=True, help="the signing domain (d=), e.g. example.com")
    gen.add_argument("--selector", required=True, help="the selector (s=), e.g. s1 or 2026a")
    gen.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa", help="rsa (2048 bits; default)")
    gen.add_argument("--out", type=Path, default=Path("."), help="folder for SELECTOR.DOMAIN.pem (default: here)")
    gen.set_defaults(handler=run)
    chk = actions.add_parser("check", help="look up each configured key's TXT record and compare")
    chk.add_argument("--timeout", type=float, default=5.0, help="seconds per DNS query (default 5)")
    chk.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    return _keygen(args) if args.dkim_action == "keygen" else _check(args)


def _keygen(args: argparse.Namespace) -> int:
    from ..cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
    from ..dkimsign import dns_record, generate_key

    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.\-_]*[A-Za-z0-9])?", f"{args.selector}.{args.domain}"):
        print(f"mailsvc dkim keygen: {args.selector!r}/{args.domain!r} is not a selector/domain", file=sys.stderr)
        return EXIT_USAGE
    pem, public = generate_key(args.algorithm)
    path = args.out / f"{args.selector}.{args.domain}.pem"
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(path, "xb") as f:  # never overwrite a key that may be published already
            path.chmod(0o600)
            f.write(pem)
    except OSError as exc:
        print(f"mailsvc dkim keygen: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {path} ({args.algorithm}); publish this TXT record, then set the MAILSVC_DKIM_* settings:")
    print(f"{args.selector}._domainkey.{args.domain}. IN TXT {_quoted(dns_record(args.algorithm, public))}")
    print(f"MAILSVC_DKIM_DOMAIN={args.domain} MAILSVC_DKIM_SELECTOR={args.selector} MAILSVC_DKIM_KEY_FILE={path}")
    return EXIT_OK


def _quoted(record: str) -> str:
    """A TXT value in 255-character strings, as zone files and most DNS consoles take a long RSA record."""
    return " ".join(f'"{record[i : i + 255]}"' for i in range(0, len(record), 255))


def _check(args: argparse.Namespace) -> int:
    from ..cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, load_project_settings

    ring = load_project_settings().mail_config().dkim_keyring()
    if not ring:
        print("mailsvc dkim check: no DKIM key configured (MAILSVC_DKIM_* settings)", file=sys.stderr)
        return EXIT_USAGE
    ok = True
    for domain in sorted(ring.domains):
        key = ring.key_for(domain)
        assert key is not None
        try:
            records = lookup_txt(key.dns_name, args.timeout)
        except OSError as exc:
            print(f"mailsvc dkim check: cannot query DNS from this machine: {exc}", file=sys.stderr)
            return EXIT_FAILED
        if not records:
            print(f"{key.dns_name}: no TXT record; publish: {key.dns_record()}")
            ok = False
        elif any(record_matches(r, key.public) for r in records):
            print(f"{key.dns_name}: OK, the published record matches {key.algorithm} key for {domain}")
        else:
            print(f"{key.dns_name}: MISMATCH, the published record is not this key's; publish: {key.dns_record()}")
            ok = False
    return EXIT_OK if ok else EXIT_FAILED


def record_matches(record: str, public_b64: bytes) -> bool:
    """Does a TXT record's ``p=`` tag carry this public key (whitespace inside the value ignored)?"""
    tags = dict(t.strip().partition("=")[::2] for t in record.split(";") if "=" in t)
    return "".join(tags.get("p", "").split()) == public_b64.decode("ascii")


def lookup_txt(name: str, timeout: float) -> list[str]:
    """The TXT strings at ``name``; [] when it has none; OSError when this machine cannot ask DNS at all."""
    import dns.exception
    import dns.resolver

    try:
        answer = dns.resolver.resolve(name, "TXT", lifetime=timeout)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.resolver.NoNameservers, dns.resolver.NoResolverConfiguration, dns.exception.Timeout) as exc:
        raise OSError(str(exc) or type(exc).__name__) from exc
    return [b"".join(r.strings).decode("ascii", "replace") for r in answer]
