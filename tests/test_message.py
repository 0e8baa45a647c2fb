"""Message building: MIME structure, encodings, and header checks, parsed back with the stdlib parser."""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage

import pytest

from mailsvc import AddressError, Attachment, BadHeaderError, Message, MessageError

SENDER = "shop@example.com"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=policy.default)  # type: ignore[return-value]


def build(msg: Message) -> tuple[bytes, EmailMessage]:
    data = msg.build(default_sender=SENDER).data
    return data, parse(data)


def assert_wire_safe(data: bytes) -> None:
    """No line over 998 octets and no CR or LF outside a CRLF pair (SMTP smuggling)."""
    for line in data.split(b"\r\n"):
        assert len(line) <= 998
        assert b"\n" not in line and b"\r" not in line


def test_flask_mail_defaults() -> None:
    msg = Message("Hi")
    assert msg.recipients == [] and msg.cc == [] and msg.bcc == [] and msg.attachments == []
    msg.add_recipient("ann@example.com")
    msg.cc.append(("Bob", "bob@example.com"))
    msg.bcc.append("carl@example.com")
    assert msg.send_to == {"ann@example.com", "bob@example.com", "carl@example.com"}
    assert msg.msgId == msg.msgId  # stable once minted
    assert msg.msgId.startswith("<") and msg.msgId.endswith(">")


def test_tuple_sender_and_default_sender() -> None:
    msg = Message("Hi", recipients=["ann@example.com"], body="x", sender=("Shop", "shop@example.com"))
    _, parsed = build(msg)
    assert parsed["From"].addresses[0].display_name == "Shop"
    assert parsed["From"].addresses[0].addr_spec == "shop@example.com"
    _, parsed = build(Message("Hi", recipients=["ann@example.com"], body="x"))
    assert parsed["From"] == SENDER
    with pytest.raises(MessageError) as err:
        Message("Hi", recipients=["ann@example.com"], body="x").build()
    assert err.value.field == "sender"


def test_no_recipients_is_an_error() -> None:
    with pytest.raises(MessageError) as err:
        Message("Hi", body="x").build(default_sender=SENDER)
    assert err.value.field == "recipients"


def test_text_only() -> None:
    data, parsed = build(Message("Hi", recipients=["a@example.com"], body="hello\nworld"))
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content() == "hello\r\nworld\n" or parsed.get_content().replace("\r\n", "\n") == "hello\nworld\n"
    assert_wire_safe(data)


def test_html_only() -> None:
    _, parsed = build(Message("Hi", recipients=["a@example.com"], html="<p>hi</p>"))
    assert parsed.get_content_type() == "text/html"
    assert "<p>hi</p>" in parsed.get_content()


def test_text_and_html_are_alternative() -> None:
    _, parsed = build(Message("Hi", recipients=["a@example.com"], body="hi", html="<p>hi</p>"))
    assert parsed.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]


def test_alts() -> None:
    msg = Message("Hi", recipients=["a@example.com"], alts={"plain": "hi", "html": "<b>hi</b>"})
    _, parsed = build(msg)
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
    msg = Message("Hi", recipients=["a@example.com"], body="hi", alts=[("x-markdown", "*hi*")])
    _, parsed = build(msg)
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/x-markdown"]


def test_binary_and_unicode_filename_attachment() -> None:
    msg = Message("Files", recipients=["a@example.com"], body="see attached")
    msg.attach("données été.bin", "application/octet-stream", PNG)
    msg.attach("notes.txt", "text/plain", "plain text ünïcode")
    data, parsed = build(msg)
    assert_wire_safe(data)
    assert parsed.get_content_type() == "multipart/mixed"
    body, binary, text = list(parsed.iter_parts())
    assert body.get_content_type() == "text/plain"
    assert binary.get_filename() == "données été.bin"
    assert binary.get_content() == PNG
    assert b"filename*=utf-8''" in data  # RFC 2231, not raw UTF-8 in the header
    assert text.get_filename() == "notes.txt"
    assert text.get_payload(decode=True) == "plain text ünïcode".encode()


def test_ascii_attachments_transliterates() -> None:
    msg = Message("Files", recipients=["a@example.com"], body="x")
    msg.attach("résumé.pdf", "application/pdf", b"%PDF")
    parsed = parse(msg.build(default_sender=SENDER, ascii_attachments=True).data)
    assert [p.get_filename() for p in parsed.iter_attachments()] == ["resume.pdf"]


@pytest.mark.parametrize("body", [None, "text version"])
@pytest.mark.parametrize("attachment_first", [False, True])
def test_inline_image_is_related_to_html(body: str | None, attachment_first: bool) -> None:
    msg = Message("Logo", recipients=["a@example.com"], body=body, html='<img src="cid:logo">')
    if attachment_first:
        msg.attach("terms.pdf", "application/pdf", b"%PDF-1.4")
    msg.attach("logo.png", "image/png", PNG, "inline", {"Content-ID": "<logo>"})
    if not attachment_first:
        msg.attach("terms.pdf", "application/pdf", b"%PDF-1.4")
    data, parsed = build(msg)
    assert_wire_safe(data)
    assert parsed.get_content_type() == "multipart/mixed"
    first, pdf = list(parsed.iter_parts())
    assert pdf.get_content_type() == "application/pdf" and pdf.get_content_disposition() == "attachment"
    if body is None:
        related = first
    else:
        assert first.get_content_type() == "multipart/alternative"
        plain, related = list(first.iter_parts())
        assert plain.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html, img = list(related.iter_parts())
    assert html.get_content_type() == "text/html"
    assert img["Content-ID"] == "<logo>"
    assert img.get_content_disposition() == "inline"
    assert img.get_content() == PNG


def test_non_ascii_subject_and_names_use_rfc2047() -> None:
    msg = Message(
        "Grüße aus Köln ☃",
        recipients=[("Zoë Ünal", "zoe@example.com")],
        sender=("Café Ünïcode", "cafe@example.com"),
        body="héllo",
    )
    data, parsed = build(msg)
    assert data.isascii()
    assert b"=?utf-8?" in data.split(b"\r\n\r\n", 1)[0].lower()
    assert parsed["Subject"] == "Grüße aus Köln ☃"
    assert parsed["To"].addresses[0].display_name == "Zoë Ünal"
    assert parsed["From"].addresses[0].display_name == "Café Ünïcode"
    assert parsed.get_content().strip() == "héllo"


def test_idna_domain_in_envelope_and_header() -> None:
    msg = Message("Hi", recipients=["zoe@bücher.example"], sender="shop@bücher.example", body="x")
    env = msg.build()
    assert env.recipients == ("zoe@xn--bcher-kva.example",)
    assert env.sender == "shop@xn--bcher-kva.example"
    parsed = parse(env.data)
    assert parsed["To"] == "zoe@xn--bcher-kva.example"
    assert "SMTPUTF8" not in env.mail_options


def test_long_lines_and_bare_newlines_are_made_safe() -> None:
    body = ("x" * 5000) + "\n" + "line\rwith bare CR\r\nand CRLF\n" + ("é" * 3000)
    html = "<p>" + ("y" * 4000) + "</p>\n"
    msg = Message("S" * 1200, recipients=["a@example.com"], body=body, html=html)
    data, parsed = build(msg)
    assert_wire_safe(data)
    plain = parsed.get_body(("plain",))
    assert plain is not None
    assert plain.get_content().replace("\r\n", "\n") == normalize(body) + ("" if body.endswith("\n") else "\n")
    assert parsed["Subject"] == "S" * 1200


def normalize(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def test_bcc_in_envelope_never_in_headers() -> None:
    msg = Message("Hi", recipients=["a@example.com"], cc=["c@example.com"], bcc=["secret@example.com"], body="x")
    env = msg.build(default_sender=SENDER)
    assert set(env.recipients) == {"a@example.com", "c@example.com", "secret@example.com"}
    assert b"secret@example.com" not in env.data
    assert "Bcc" not in parse(env.data)


def test_duplicate_recipients_sent_once() -> None:
    msg = Message("Hi", recipients=["a@example.com", "A@example.com"], cc=["a@example.com"], body="x")
    assert msg.build(default_sender=SENDER).recipients == ("a@example.com",)


def test_extra_headers_and_reply_to() -> None:
    msg = Message(
        "Hi",
        recipients=["a@example.com"],
        body="x",
        reply_to=("Help", "help@example.com"),
        extra_headers={"X-Campaign": "spring", "Subject": "overridden"},
    )
    _, parsed = build(msg)
    assert parsed["X-Campaign"] == "spring"
    assert parsed["Reply-To"].addresses[0].addr_spec == "help@example.com"
    assert parsed.get_all("Subject") == ["overridden"]
    with pytest.raises(MessageError) as err:
        Message("Hi", recipients=["a@example.com"], body="x", extra_headers={"Content-Type": "text/evil"}).build(
            default_sender=SENDER
        )
    assert err.value.field == "extra_headers"


def test_date_and_message_id_headers() -> None:
    msg = Message("Hi", recipients=["a@example.com"], body="x", date=0.0)
    env = msg.build(default_sender=SENDER, msgid_domain="mail.example.com")
    parsed = parse(env.data)
    assert parsed["Message-ID"] == env.message_id == msg.msgId
    assert env.message_id.endswith("@mail.example.com>")
    assert parsed["Date"].datetime.timestamp() == 0.0


@pytest.mark.parametrize("bad", ["not an address", "a@", "@example.com", "a@b@c", ""])
def test_bad_addresses(bad: str) -> None:
    with pytest.raises(AddressError) as err:
        Message("Hi", recipients=[bad], body="x").build(default_sender=SENDER)
    assert err.value.field == "recipients[0]"


def test_attachment_dataclass_defaults() -> None:
    att = Attachment("a.png", data=b"x")
    assert att.resolved_content_type() == ("image", "png")
    assert not att.is_inline
    with pytest.raises(MessageError):
        Attachment("a", "nonsense", b"x").resolved_content_type()


def test_as_string_and_has_bad_headers() -> None:
    msg = Message("Hi", recipients=["a@example.com"], body="x", sender=SENDER)
    assert "Subject: Hi" in msg.as_string()
    assert not msg.has_bad_headers()
    msg.subject = "Hi\r\nBcc: victim@example.com"
    assert msg.has_bad_headers()
    with pytest.raises(BadHeaderError):
        msg.as_bytes()


def test_single_recipient_not_split_into_characters() -> None:
    assert Message("Hi", recipients="ann@example.com").recipients == ["ann@example.com"]
    assert Message("Hi", recipients=("Ann", "ann@example.com")).recipients == [("Ann", "ann@example.com")]  # type: ignore[arg-type]
    two = Message("Hi", recipients=("a@example.com", "b@example.com"))
    assert two.send_to == {"a@example.com", "b@example.com"}
    assert Message("Hi", cc="c@example.com", bcc="d@example.com").send_to == {"c@example.com", "d@example.com"}  # type: ignore[arg-type]


def test_charset() -> None:
    _, parsed = build(Message("Hi", recipients=["a@example.com"], body="café", charset="iso-8859-1"))
    assert parsed.get_content_charset() == "iso-8859-1" and parsed.get_content().strip() == "café"
    for bad in ("no-such-charset", "ascii"):
        with pytest.raises(MessageError) as err:
            build(Message("Hi", recipients=["a@example.com"], body="☃", charset=bad))
        assert err.value.field == "charset"


# Every character str.splitlines() breaks on, and encoded-words that decode to a line break
# (CVE-2024-6923: Python's email package before 3.11.10 writes them back out raw).
INJECTIONS = [
    "x\r\nBcc: victim@example.com",
    "x\nBcc: v@example.com",
    "x\x00",
    "x\x0bY",
    "x\x0cY",
    "x\x1cY",
    "x\x85Bcc: v@example.com",
    "x\u2028Bcc: v@example.com",
    "x\u2029Y",
    "=?utf-8?q?a=0D=0ABcc:_victim@example.com?=",
    "=?utf-8?b?YQ0KWC1JbmplY3RlZDogMQ==?=",
]


@pytest.mark.parametrize("bad", INJECTIONS)
@pytest.mark.parametrize(
    ("field", "make"),
    [
        ("subject", lambda v: Message(v, recipients=["a@example.com"], body="x")),
        (
            "extra_headers.X-Campaign",
            lambda v: Message("Hi", recipients=["a@example.com"], body="x", extra_headers={"X-Campaign": v}),
        ),
        (
            "attachments[0].filename",
            lambda v: Message(
                "Hi", recipients=["a@example.com"], body="x", attachments=[Attachment(v + ".txt", "text/plain", b"x")]
            ),
        ),
    ],
)
def test_header_injection_rejected_in_library_path(field: str, make, bad: str) -> None:  # type: ignore[no-untyped-def]
    """The library refuses what the web layer refuses, with our own error naming the field, never a 500."""
    msg = make(bad)
    assert msg.has_bad_headers()
    with pytest.raises(BadHeaderError) as err:
        build(msg)
    assert err.value.field == field
    assert "header injection" in str(err.value) or "encoded-word" in str(err.value)


def test_plain_encoded_word_text_is_allowed() -> None:
    """An encoded-word that decodes to ordinary text is legitimate (some clients send them)."""
    data, parsed = build(Message("=?utf-8?q?caf=C3=A9?=", recipients=["a@example.com"], body="x"))
    assert parsed["Subject"] == "café" or "caf" in parsed["Subject"]
    assert_wire_safe(data)


def test_date_header_is_the_stdlib_format_of_the_current_second() -> None:
    """The Date header is formatted once per second (a bulk batch shares it), as ``formatdate`` would."""
    import time
    from email.utils import formatdate

    from mailsvc.message import _format_date

    before = int(time.time())
    got = _format_date(None)
    after = int(time.time())
    assert got in {formatdate(s, localtime=True) for s in range(before, after + 1)}
    assert _format_date(1_700_000_000.75) == formatdate(1_700_000_000.75, localtime=True)


@pytest.mark.parametrize("now", [1_700_000_000.0, 1_700_000_000.4999, 1_700_000_000.9999997, 1_700_000_001.9999994])
def test_date_header_rounds_like_formatdate_at_the_end_of_a_second(monkeypatch: pytest.MonkeyPatch, now: float) -> None:
    from email.utils import formatdate

    from mailsvc import message

    monkeypatch.setattr(message.time, "time", lambda: now)
    assert message._format_date(None) == formatdate(now, localtime=True)
