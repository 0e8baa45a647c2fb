"""The fast builder writes exactly the bytes ``Message.build`` writes (given the same random state).

The boundary is random in both paths; both draw it from the stdlib's
``_make_boundary`` with ``random``, so seeding ``random`` before each build makes
the outputs comparable byte for byte. Message-ID and Date are fixed per case.
"""

from __future__ import annotations

import email
import random
from email import policy
from email.generator import BytesGenerator
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailsvc import Attachment, BadHeaderError, Message, MessageError, fastbuild
from mailsvc.mimewriter import mime_bytes

SENDER = "News <news@bench.example>"
_NO_SURROGATES: list[Literal["Cs"]] = ["Cs"]


def _pair(**kw: Any) -> tuple[bytes, bytes]:
    outs = []
    for build in (
        lambda m: m.build(default_sender=SENDER, msgid_domain="bench.example"),
        lambda m: fastbuild.build(m, default_sender=SENDER, msgid_domain="bench.example"),
    ):
        msg = Message(**kw)
        msg.msgId = "<170000000000.1.2@bench.example>"
        random.seed(1234)
        env = build(msg)
        outs.append((env.data, env.sender, env.recipients, env.mail_options))
    (a, *ra), (b, *rb) = outs
    assert ra == rb
    return a, b


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
CASES: dict[str, dict[str, Any]] = {
    "text": {"subject": "Hi", "recipients": ["a@b.example"], "body": "Hello\nthere\n", "date": 0},
    "html only": {"subject": "Hi", "recipients": ["a@b.example"], "html": "<p>Hi</p>", "date": 0},
    "text and html": {"subject": "Hi", "recipients": ["a@b.example"], "body": "Hi", "html": "<p>Hi</p>", "date": 1.7e9},
    "empty": {"subject": "", "recipients": ["a@b.example"], "date": 0},
    "unicode everywhere": {
        "subject": "Zoë, ton reçu № 42 ✓",
        "recipients": [("Zoë Ünïcode", "zoe@bücher.example")],
        "body": "Grüße\n" * 30,
        "html": "<p>Grüße ✓</p>" * 40,
        "sender": ("Éditions", "ed@b.example"),
        "date": 0,
    },
    "long lines and dots": {
        "subject": "x" * 120,
        "recipients": ["a@b.example"],
        "body": "y" * 300 + "\n.dot\r\nend\r",
        "date": 0,
    },
    "every address header": {
        "subject": "Hi",
        "recipients": ["a@b.example", "Ann Smith <ann@b.example>"],
        "cc": ["c@d.example"],
        "bcc": ["hidden@d.example"],
        "reply_to": "r@s.example",
        "body": "x",
        "html": "<b>x</b>",
        "date": 0,
        "extra_headers": {
            "X-Campaign": "nov 2026",
            "List-Unsubscribe": "<https://b.example/u?x=1>",
            "Sender": "s@b.example",
        },
    },
    "quoted display name": {"subject": "Hi", "recipients": ['"Smith, Ann" <ann@b.example>'], "body": "x", "date": 0},
    "binary-ish text (base64)": {
        "subject": "Hi",
        "recipients": ["a@b.example"],
        "body": "\u4e2d\u6587" * 200,
        "date": 0,
    },
    # Shapes the fast path hands to Message.build: still identical, by construction.
    "attachment": {
        "subject": "Hi",
        "recipients": ["a@b.example"],
        "body": "see attached",
        "html": "<p>see</p>",
        "date": 0,
        "attachments": [Attachment("r\u00e9sum\u00e9.pdf", "application/pdf", b"%PDF-1.4 fake")],
    },
    "inline image": {
        "subject": "Hi",
        "recipients": ["a@b.example"],
        "body": "logo",
        "html": '<img src="cid:logo">',
        "date": 0,
        "attachments": [Attachment("logo.png", "image/png", PNG, "inline", {"Content-ID": "<logo>"})],
    },
    "alts": {
        "subject": "Hi",
        "recipients": ["a@b.example"],
        "body": "x",
        "alts": {"watch-html": "<b>x</b>"},
        "date": 0,
    },
    "latin-1 charset": {
        "subject": "Hi",
        "recipients": ["a@b.example"],
        "body": "caf\u00e9",
        "charset": "iso-8859-1",
        "date": 0,
    },
    "smtputf8": {"subject": "Hi", "recipients": ["z\u00f6e@b.example"], "body": "x", "date": 0},
    "managed extra header": {
        "subject": "Hi",
        "recipients": ["a@b.example"],
        "body": "x",
        "date": 0,
        "extra_headers": {"Reply-To": "r@b.example"},
    },
}


@pytest.mark.parametrize("name", list(CASES))
def test_same_bytes_as_message_build(name: str) -> None:
    stdlib, fast = _pair(**CASES[name])
    assert fast == stdlib


@pytest.mark.parametrize("name", ["text", "text and html", "unicode everywhere"])
def test_fast_path_is_taken_for_the_common_shapes(name: str) -> None:
    assert fastbuild.fast_path_applies(Message(**CASES[name]))


@pytest.mark.parametrize("name", ["attachment", "inline image", "alts", "latin-1 charset", "managed extra header"])
def test_other_shapes_are_handed_to_message_build(name: str) -> None:
    assert not fastbuild.fast_path_applies(Message(**CASES[name]))


@pytest.mark.parametrize("suffix", [b"\n", b"--\n", b"", b"\r\n", b" \n"])
def test_boundary_collision_rule_is_the_stdlibs(suffix: bytes) -> None:
    random.seed(5)
    drawn = BytesGenerator._make_boundary()  # type: ignore[attr-defined]  # the stdlib's own, private
    text = b"a line\n--" + drawn.encode() + suffix
    random.seed(5)
    expected = BytesGenerator._make_boundary(text)  # type: ignore[attr-defined]
    random.seed(5)
    assert fastbuild._make_boundary(text) == expected


def test_body_holding_the_boundary_is_still_identical() -> None:
    random.seed(1234)
    drawn = BytesGenerator._make_boundary()  # type: ignore[attr-defined]  # the stdlib's own, private
    stdlib, fast = _pair(
        subject="Hi", recipients=["a@b.example"], body=f"x\n--{drawn}\n--{drawn}--", html="<p>x</p>", date=0
    )
    assert fast == stdlib


@pytest.mark.parametrize(
    ("body", "html"),
    [
        ("y" * 100 + "\n--{b}\n--{b}--", "<p>x</p>"),  # a long line: quoted-printable, the boundary quoted away
        ("\u4e2d\u6587\n--{b}\n" * 30, "<p>x</p>"),  # base64
        ("x", "<p>x</p>\n--{b}\n"),  # the HTML part 7bit, the text part not searched
        ("z" * 90 + "\n--{b}\n", "<p>x</p>\n--{b}--\n"),  # QP text, 7bit HTML holding it
    ],
)
def test_only_7bit_bodies_can_hold_the_boundary_and_the_bytes_stay_identical(body: str, html: str) -> None:
    random.seed(1234)
    drawn = BytesGenerator._make_boundary()  # type: ignore[attr-defined]  # the stdlib's own, private
    stdlib, fast = _pair(
        subject="Hi", recipients=["a@b.example"], body=body.format(b=drawn), html=html.format(b=drawn), date=0
    )
    assert fast == stdlib


@pytest.mark.parametrize("suffix", ["\n", "--\n", "", "\r\n"])
def test_boundary_from_a_string_is_the_same_as_from_bytes(suffix: str) -> None:
    random.seed(5)
    drawn = BytesGenerator._make_boundary()  # type: ignore[attr-defined]  # the stdlib's own, private
    text = f"a line\r\n--{drawn}{suffix}"
    random.seed(5)
    expected = fastbuild._make_boundary(text.encode("ascii"))
    random.seed(5)
    assert fastbuild._make_boundary(text) == expected


def test_parses_back_to_the_same_parts() -> None:
    stdlib, fast = _pair(**CASES["unicode everywhere"])
    a = email.message_from_bytes(stdlib, policy=policy.default)
    b = email.message_from_bytes(fast, policy=policy.default)
    assert [(p.get_content_type(), p.get_content()) for p in b.walk() if not p.is_multipart()] == [
        (p.get_content_type(), p.get_content()) for p in a.walk() if not p.is_multipart()
    ]
    assert b["Subject"] == "Zoë, ton reçu № 42 ✓"


def test_bad_input_is_refused_like_message_build() -> None:
    with pytest.raises(MessageError) as fast:
        fastbuild.build(
            Message("Hi\r\nBcc: x@evil.example", recipients=["a@b.example"], body="x"), default_sender=SENDER
        )
    with pytest.raises(MessageError) as plain:
        Message("Hi\r\nBcc: x@evil.example", recipients=["a@b.example"], body="x").build(default_sender=SENDER)
    assert (type(fast.value), fast.value.field) == (type(plain.value), plain.value.field)


_printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x17F, blacklist_characters="\x7f"), max_size=90)
_body = st.text(st.characters(blacklist_categories=_NO_SURROGATES, blacklist_characters="\x00"), max_size=400)
_name = st.from_regex(r"[A-Za-z0-9 ,.'\"()-]{0,30}", fullmatch=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=_printable, body=st.one_of(st.none(), _body), html=st.one_of(st.none(), _body), name=_name, tag=_printable
)
def test_same_bytes_for_arbitrary_content(
    subject: str, body: str | None, html: str | None, name: str, tag: str
) -> None:
    kw: dict[str, Any] = {
        "subject": subject.strip("\r\n"),
        "recipients": [(name, "reader@bench.example")],
        "body": body,
        "html": html,
        "date": 0,
        "extra_headers": {"X-Tag": tag},
    }
    outcomes: list[bytes | type[Exception]] = []
    for build in (Message.build, fastbuild.build):
        msg = Message(**kw)
        msg.msgId = "<170000000000.1.2@bench.example>"
        random.seed(99)
        try:
            outcomes.append(build(msg, default_sender=SENDER).data)
        except ValueError as exc:  # MessageError, or the stdlib's own refusal (both paths alike)
            outcomes.append(type(exc))
    assert outcomes[1] == outcomes[0]


# -- the body encoder: the stdlib's _encode_text, exactly --------------------------------------------------------


def _stdlib_encode_text(text: str) -> tuple[str, str]:
    """What the plain path writes for one UTF-8 text part: the stdlib's choice and payload, lines ending in CRLF."""
    from email.contentmanager import _encode_text  # type: ignore[attr-defined]

    from mailsvc.message import normalize_newlines
    from mailsvc.mimewriter import POLICY_7BIT as _POLICY_7BIT

    cte, payload = _encode_text(normalize_newlines(text), "utf-8", None, _POLICY_7BIT)
    return cte, "\r\n".join(payload.replace("\r\n", "\n").split("\n"))


ENCODER_CASES = {
    "short ascii (7bit)": "Hello\nthere\n",
    "empty": "",
    "long ascii line (qp, few lines)": "x" * 300 + "\nend",
    "long lines, more than the 10-line sniff (qp)": ("y" * 90 + " = z\n") * 25,
    "trailing space and tab": "a \nb\t\n" + "c" * 77 + " \n" + "d" * 78 + " \n" + "e" * 79 + "\t\n" + "f" * 200 + " ",
    "escape at every break position": "\n".join("w" * n + "=" * 5 + "v" * 90 for n in range(70, 80)),
    "non-ascii short lines (qp)": "Grüße ✓\n" * 30,
    "mostly non-latin (base64)": "\u4e2d\u6587" * 200,
    "control and line-break-like characters": "a\x0bb\x0cc\x1cd\x85e\u2028f\x00g\r\nh\ri" * 20,
    "only newlines": "\n\n\r\n\r",
    "ascii controls and = only": "a\x0bb\x00c\x1f=d\x7f\x0ce\x1c" * 10,
    # The sniff's tie-break: QP as long as base64 stays QP, one longer turns base64.
    "sniff tie (qp)": "\u00e9aa",
    "sniff one longer (base64)": "\u00e9\u00e9a",
    "sniff of 10 lines one longer (base64)": "\u00e9aaaa\n" * 12,
    # Trailing whitespace where the last piece has room for 3, 2 or 1 more characters.
    **{f"trailing {ws!r} at length {n}": ("z" * (n - 1) + ws + "\n") * 3 for n in (153, 154, 155, 156) for ws in " \t"},
}


@pytest.mark.parametrize("name", list(ENCODER_CASES))
def test_body_encoder_is_the_stdlibs(name: str) -> None:
    assert fastbuild._encode_text(ENCODER_CASES[name]) == _stdlib_encode_text(ENCODER_CASES[name])


def test_body_encoder_cases_cover_every_transfer_encoding() -> None:
    assert {fastbuild._encode_text(t)[0] for t in ENCODER_CASES.values()} == {"7bit", "quoted-printable", "base64"}
    assert fastbuild._encode_text(ENCODER_CASES["sniff tie (qp)"])[0] == "quoted-printable"
    assert fastbuild._encode_text(ENCODER_CASES["sniff one longer (base64)"])[0] == "base64"
    assert fastbuild._encode_text(ENCODER_CASES["sniff of 10 lines one longer (base64)"])[0] == "base64"


_line = st.one_of(
    st.text(st.sampled_from("ab =\t.-é✓中\x0b\x85"), max_size=12).map(lambda s: "x" * 70 + s),  # around the break
    st.text(st.characters(blacklist_categories=_NO_SURROGATES), max_size=200),
    st.text(st.sampled_from("a= \t"), max_size=170),
)


@settings(max_examples=400, deadline=None)
@given(lines=st.lists(_line, max_size=25), sep=st.sampled_from(["\n", "\r\n", "\r"]))
def test_body_encoder_same_output_for_arbitrary_text(lines: list[str], sep: str) -> None:
    text = sep.join(lines)
    assert fastbuild._encode_text(text) == _stdlib_encode_text(text)


def test_both_writers_follow_one_plan() -> None:
    """A header added to the plan (as a signer or an unsubscribe rule would) is written alike by both writers."""
    msg = Message(**CASES["text and html"])
    msg.msgId = "<170000000000.1.2@bench.example>"
    plan = msg.plan(default_sender=SENDER, msgid_domain="bench.example")
    plan = plan.with_header("List-Unsubscribe", "<https://b.example/u?x=1>")
    random.seed(7)
    stdlib = mime_bytes(plan)
    random.seed(7)
    assert fastbuild.write(plan) == stdlib
    assert b"\r\nList-Unsubscribe: <https://b.example/u?x=1>\r\n" in stdlib


@pytest.mark.parametrize(
    ("header", "field"),
    [(("X-Evil", "a\r\nBcc: x@evil.example"), "headers.X-Evil"), (("Bad Name", "x"), "headers")],
)
def test_a_plan_refuses_a_header_that_could_inject(header: tuple[str, str], field: str) -> None:
    plan = Message(**CASES["text"]).plan(default_sender=SENDER)
    with pytest.raises(BadHeaderError) as caught:
        plan.with_header(*header)
    assert caught.value.field == field
