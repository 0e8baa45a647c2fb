"""The form, the inbox and the previews in a real browser against a real hypercorn.

Each page is screenshotted at 375 px and 1440 px into tests/screenshots/ for a person to look at.
"""

from __future__ import annotations

import base64
import smtplib
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

PNG_1PX = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 900}, accept_downloads=True)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


def shoot(page: Any, folder: Path, name: str) -> None:
    """Full-page screenshots at both widths; the page is left at desktop width."""
    for label, width in (("375", 375), ("1440", 1440)):
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(folder / f"{name}-{label}.png"), full_page=True)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{name} scrolls sideways at {width}px by {overflow}px"


def open_in_inbox(page: Any, base_url: str, subject: str) -> None:
    """Reload /inbox until the delivered message is listed (delivery is asynchronous), then open it."""
    deadline = time.monotonic() + 30  # a cap on waiting, not a speed assertion
    while True:
        page.goto(f"{base_url}/inbox?q={subject}")
        link = page.get_by_role("link", name=subject)
        if link.count():
            break
        assert time.monotonic() < deadline, f"{subject!r} never reached the inbox"
        page.wait_for_timeout(100)
    link.first.click()
    page.wait_for_load_state()


def test_form_to_inbox_with_attachment(page: Any, base_url: str, screenshots: Path) -> None:
    page.goto(f"{base_url}/")
    shoot(page, screenshots, "form")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"

    name = f"Ann {uuid.uuid4().hex[:6]}"
    page.get_by_label("To", exact=True).fill(f"{name} <ann@example.com>")
    page.get_by_label("Template").select_option("thank_you")
    page.get_by_label("Subject", exact=True).fill("Opening hours")
    page.get_by_label("Message", exact=True).fill("Are you open on Sundays?")
    notes = b"notes from the browser test\n"
    page.set_input_files("#attachments", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": notes}])
    page.get_by_role("button", name="Queue message").click()
    page.wait_for_selector("#message-id")
    assert page.locator("#message-id").inner_text().strip()
    subject = f"Thank you for your message, {name}"
    queued_at = time.monotonic()
    while not page.request.get(f"{base_url}/api/inbox", params={"q": name}).json()["total"]:
        assert time.monotonic() - queued_at < 30, "the message never reached the dev inbox"
        time.sleep(0.01)
    # A figure for the "appears within a second", printed (-s) rather than asserted.
    print(f"\nform submission -> dev inbox: {(time.monotonic() - queued_at) * 1000:.0f} ms")
    shoot(page, screenshots, "sent")

    open_in_inbox(page, base_url, subject)
    page.goto(f"{base_url}/inbox")
    shoot(page, screenshots, "inbox")
    page.get_by_role("link", name=subject).first.click()
    page.wait_for_load_state()
    assert page.locator("h1").inner_text() == subject

    iframe = page.locator("iframe.mail")
    sandbox = iframe.get_attribute("sandbox") or ""
    assert "allow-scripts" not in sandbox and "allow-same-origin" not in sandbox
    frame = page.frame_locator("iframe.mail")
    assert "Thank you for getting in touch" in frame.locator("body").inner_text()
    assert frame.locator("strong").inner_text() == "Opening hours"
    shoot(page, screenshots, "message")

    with page.expect_download() as download_info:
        page.get_by_role("link", name="notes.txt").click()
    download = download_info.value
    assert download.suggested_filename == "notes.txt"
    assert Path(download.path()).read_bytes() == notes


def test_message_scripts_never_run(page: Any, base_url: str, screenshots: Path) -> None:
    subject = f"Scripted {uuid.uuid4().hex[:6]}"
    html = (
        "<h2 id='hello'>Hello from HTML</h2>"
        "<script>document.body.setAttribute('data-pwned', 'script')</script>"
        "<img src='data:,' onerror=\"document.body.setAttribute('data-pwned', 'onerror')\">"
        "<img alt='dot' src='data:image/gif;base64,R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw=='>"
    )
    response = page.request.post(
        f"{base_url}/api/messages", data={"to": "bob@example.com", "subject": subject, "html": html, "text": "plain"}
    )
    assert response.status == 202, response.text()
    open_in_inbox(page, base_url, subject)
    frame = page.frame_locator("iframe.mail")
    assert frame.locator("#hello").inner_text() == "Hello from HTML"  # the frame did load
    assert frame.locator("body").get_attribute("data-pwned") is None  # no inline script, no handler

    # Even opened on its own (not in the sandboxed iframe), the part runs nothing.
    page.goto(base_url + (page.locator("iframe.mail").get_attribute("src") or ""))
    assert page.locator("#hello").inner_text() == "Hello from HTML"
    assert page.locator("body").get_attribute("data-pwned") is None

    # Delete it with the keyboard only.
    page.go_back()
    page.get_by_role("button", name="Delete", exact=True).focus()
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base_url}/inbox?deleted=1")
    assert page.get_by_role("status").inner_text() == "Deleted 1 message."
    assert page.get_by_role("link", name=subject).count() == 0


def test_inline_image_from_another_app_shows(page: Any, base_url: str, dev_smtp_port: int, screenshots: Path) -> None:
    """Another local app talks SMTP to the dev inbox directly; its cid: image renders in the frame."""
    subject = f"Newsletter {uuid.uuid4().hex[:6]}"
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "news@example.com", "carol@example.com", subject
    msg.set_content("text version")
    msg.add_alternative('<h2>News</h2><img id="logo" alt="logo" src="cid:logo@news">', subtype="html")
    html_part = msg.get_body(("html",))
    assert isinstance(html_part, EmailMessage)
    html_part.add_related(PNG_1PX, "image", "png", cid="<logo@news>")
    with smtplib.SMTP("127.0.0.1", dev_smtp_port, timeout=30) as smtp:
        smtp.send_message(msg)
    open_in_inbox(page, base_url, subject)
    frame = page.frame_locator("iframe.mail")
    logo = frame.locator("#logo")
    logo.wait_for()
    assert logo.evaluate("img => img.complete && img.naturalWidth") == 1


def test_previews(page: Any, base_url: str, screenshots: Path) -> None:
    page.goto(f"{base_url}/previews")
    shoot(page, screenshots, "previews")
    page.get_by_role("link", name="welcome").click()
    page.wait_for_load_state()
    assert page.locator("h1").inner_text() == "welcome"
    assert "Welcome aboard, Ann!" in page.locator("main").inner_text()
    frame = page.frame_locator("iframe.mail")
    assert "Your account is ready." in frame.locator("body").inner_text()
    assert frame.get_by_role("link", name="Sign in").get_attribute("href") == "https://example.com/login"
    shoot(page, screenshots, "preview")

    page.goto(f"{base_url}/previews")
    assert "error on line 2" in page.locator("li", has_text="broken").inner_text()
    response = page.goto(f"{base_url}/previews/broken")
    assert response is not None and response.status == 422
    alert = page.get_by_role("alert")
    assert "broken.html, line 2" in alert.inner_text()
    assert "{% if %}" in alert.locator("li.hit").inner_text()
    shoot(page, screenshots, "preview-error")


def _luminance(css_rgb: str) -> float:
    r, g, b = (int(x) / 255 for x in css_rgb[css_rgb.index("(") + 1 : css_rgb.index(")")].split(",")[:3])
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def test_form_fields_are_readable_widths_with_visible_edges(page: Any, base_url: str) -> None:
    """At 1440 px a field is at most 40rem (640 px) wide; at 375 px it fills the card; its edge has 3:1 contrast."""
    page.goto(f"{base_url}/")
    fields = ["#email", "#template", "#subject", "#message"]
    for width in (1440, 375):
        page.set_viewport_size({"width": width, "height": 900})
        for sel in fields:
            box = page.locator(sel).bounding_box()
            assert box is not None
            if width == 1440:
                assert box["width"] <= 640.5, f"{sel} is {box['width']}px wide at 1440px"
            else:
                assert box["width"] >= 375 - 2 * 40, f"{sel} is only {box['width']}px wide at 375px"
        border, background = page.locator("#subject").evaluate(
            "el => [getComputedStyle(el).borderTopColor, getComputedStyle(el).backgroundColor]"
        )
        lighter, darker = sorted((_luminance(border), _luminance(background)), reverse=True)
        assert (lighter + 0.05) / (darker + 0.05) >= 3, f"field edge {border} on {background} is too faint"
