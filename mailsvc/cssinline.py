"""CSS inlining for HTML email: ``<style>`` rules copied into each element's ``style`` attribute.

Why: Gmail's web client, Outlook and many others drop or ignore ``<style>`` blocks, so a template
written with a stylesheet arrives unstyled. ``css-inline`` (Rust, Mozilla's Servo CSS parser) does the
job well and fast; we only choose its options:

- remote stylesheets are never fetched (``<link href="http://...">`` would be a request to wherever a
  template points, at send time: a server-side request forgery and a stall);
- ``@media`` and other at-rules stay in a ``<style>`` block, since they cannot be inlined and are what
  keeps a mail readable on a phone;
- it is opt-in per template (:data:`MARKER` in the ``.html`` file), because inlining rewrites the HTML
  a template author wrote and costs time per message (measured in ``bench/run.py --inline-css``).
"""

from __future__ import annotations

import css_inline

from .errors import TemplateError

__all__ = ["MARKER", "asks_for_inlining", "inline_css"]

#: A template's HTML part asks for inlining by containing this Jinja comment (it renders as nothing).
MARKER = "{# mailsvc: inline-css #}"

_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False, keep_at_rules=True, keep_link_tags=False)


def asks_for_inlining(source: str) -> bool:
    """Whether a template's HTML source carries :data:`MARKER`."""
    return MARKER in source


def inline_css(name: str, html: str) -> str:
    """``html`` with its ``<style>`` rules inlined; a stylesheet css-inline cannot parse names the template."""
    try:
        return _INLINER.inline(html)
    except (css_inline.InlineError, ValueError) as exc:
        raise TemplateError(name, f"CSS could not be inlined: {exc}") from exc
