"""Address parsing is cached; the cache must never change an answer or the field an error names."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsvc import AddressError, BadHeaderError
from mailsvc.addresses import ParsedAddress, _parse, parse_address
from mailsvc.errors import MessageError

GOOD = [
    "a@b.example",
    "Ann <ann@b.example>",
    ("Zoë", "zoe@bücher.example"),
    '"Smith, Ann" <ann@b.example>',
    "ÿ@b.example",
]


@pytest.mark.parametrize("value", GOOD)
def test_cached_parse_is_the_uncached_parse(value: str | tuple[str, str]) -> None:
    first = parse_address(value, "sender")
    assert first == _parse(value, "sender", "permissive")
    assert parse_address(value, "recipients[0]") == first  # second call: from the cache


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("not an address", AddressError),
        ("a@b.example\r\nBcc: x@evil.example", BadHeaderError),
        (("Ann", 3), AddressError),
    ],
)
def test_a_repeated_bad_address_names_each_callers_field(value: object, error: type[Exception]) -> None:
    for field in ("sender", "recipients[0]", "cc[3]"):
        with pytest.raises(error) as err:
            parse_address(value, field)  # type: ignore[arg-type]
        assert type(err.value) is error
        assert err.value.field == field  # type: ignore[attr-defined]
        assert str(err.value).startswith(f"{field}: ")


def test_invalid_address_keeps_email_validators_reason_as_cause() -> None:
    for field, value, rules in (
        ("sender", "ann@nodot", "deliverable"),  # a dotless domain: accepted by the permissive default
        ("reply_to[0]", "ann@-bad.example", "permissive"),
    ):
        with pytest.raises(AddressError) as err:
            parse_address(value, field, rules)  # type: ignore[arg-type]
        assert isinstance(err.value.__cause__, EmailNotValidError)
        assert value in err.value.reason


def test_unhashable_value_is_refused_not_crashed() -> None:
    with pytest.raises(AddressError) as err:
        parse_address(("Ann", ["ann@b.example"]), "to[1]")  # type: ignore[arg-type]
    assert err.value.field == "to[1]"


def test_header_form_of_display_names() -> None:
    assert parse_address('"Smith, Ann" <ann@b.example>').header == '"Smith, Ann" <ann@b.example>'
    assert parse_address(("Ann", "ann@b.example")).header == "Ann <ann@b.example>"
    assert parse_address("ann@b.example").header == "ann@b.example"


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=40), st.tuples(st.text(max_size=15), st.text(max_size=25)), st.emails()))
def test_same_answer_cached_or_not(value: str | tuple[str, str]) -> None:
    def outcome(f: object) -> object:
        try:
            p = f()  # type: ignore[operator]
        except ValueError as exc:
            return (type(exc), getattr(exc, "field", None), str(exc))
        assert isinstance(p, ParsedAddress)
        return p, p.header

    for _ in range(2):
        assert outcome(lambda: parse_address(value, "x")) == outcome(lambda: _parse(value, "x", "permissive"))


# -- the plain-address shortcut answers exactly as getaddresses + validate_email --------------------------------


def _reference(value: str | tuple[str, str]) -> object:
    """parse_address as written before the shortcuts: the stdlib's parser, then email_validator on every address."""
    from email.utils import getaddresses

    from email_validator import validate_email

    if isinstance(value, tuple):
        name, addr = value
    else:
        [(name, addr)] = getaddresses([value])
    try:
        v = validate_email(addr.strip(), check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        return ("invalid", str(exc))
    return ParsedAddress(name.strip(), f"{v.local_part}@{v.ascii_domain}", not v.local_part.isascii())


def _ours(value: str | tuple[str, str]) -> object:
    """Under the "deliverable" rules the shortcuts must answer exactly as email_validator does."""
    try:
        return _parse(value, "x", "deliverable")
    except AddressError as exc:
        assert isinstance(exc.__cause__, EmailNotValidError), exc
        return ("invalid", str(exc.__cause__))


_atom = st.text(st.sampled_from("abcXYZ019!#$%&'*+/=?^_`{|}~-"), min_size=1, max_size=8)
_label = st.one_of(
    st.text(st.sampled_from("abcXYZ019-"), min_size=1, max_size=10),
    st.sampled_from(
        [
            "xn--bcher-kva",
            "XN--BCHER-KVA",
            "test",
            "local",
            "localhost",
            "invalid",
            "example",
            "123",
            "com",
            "a" * 63,
            "a" * 64,
        ]
    ),
)
_plain = st.builds(
    lambda local, labels: f"{'.'.join(local)}@{'.'.join(labels)}",
    st.one_of(
        st.lists(_atom, min_size=1, max_size=4),
        st.sampled_from([["Postmaster"], ["ABUSE"], ["x" * 64], ["x" * 65]]).map(list),
    ),
    st.lists(_label, min_size=1, max_size=5),
)


@pytest.mark.parametrize(
    "value",
    [
        "user1@bench.example",
        "User.Name+tag@Example.COM",
        "postmaster@b.example",
        "a@b",
        "a@localhost",
        "a@x.test",
        "a@-b.example",
        "a@b-.example",
        "a@b.123",
        "a@xn--bcher-kva.example",
        "x" * 65 + "@b.example",
        "a@" + ".".join(["b" * 63] * 4),
        "abcdefghij@" + ".".join(["b" * 62] * 4),
        ("Ann", "ann@b.example"),
        ("", "A@B.EXAMPLE"),
    ],
)
def test_plain_addresses_get_the_validators_answer(value: str | tuple[str, str]) -> None:
    assert _ours(value) == _reference(value)


@settings(max_examples=400, deadline=None)
@given(st.one_of(_plain, st.emails(), st.tuples(st.sampled_from(["", "Ann"]), _plain)))
def test_plain_address_shortcut_is_exact(value: str | tuple[str, str]) -> None:
    assert _ours(value) == _reference(value)


# -- issue 14: Flask-Mail's addresses are accepted by default; "deliverable" is opt-in ------------------------

FLASK_MAIL_ACCEPTS = ["root@localhost", "a@b.test", "a@x.local", "a@[127.0.0.1]", '"john doe"@example.com', "a@host"]


@pytest.mark.parametrize("value", FLASK_MAIL_ACCEPTS)
def test_special_use_dotless_literal_and_quoted_addresses_are_accepted_by_default(value: str) -> None:
    parsed = parse_address(value, "to")
    assert parsed.envelope.lower() == value.lower()
    with pytest.raises(AddressError) as exc:
        parse_address(value, "to", "deliverable")
    assert exc.value.field == "to"


@pytest.mark.parametrize(
    "value",
    ["a@-b.example", "a@b..c", "no-at-sign", "a@", "@b.example", "a b@c.example", "a@exa mple.com", "a@" + "b" * 64],
)
def test_permissive_rules_still_refuse_what_is_not_an_address(value: str) -> None:
    with pytest.raises(AddressError):
        parse_address(value, "to")


@pytest.mark.parametrize("value", ["a@localhost\r\nBcc: x@evil.example", "a@b.test\nX: y", "a@[127.0.0.1]\x00"])
def test_injection_is_refused_under_both_rules(value: str) -> None:
    for rules in ("permissive", "deliverable"):
        with pytest.raises(MessageError):
            parse_address(value, "to", rules)  # type: ignore[arg-type]
