"""Flask-Mail's ``email_dispatched`` signal, for code that listens to it (blinker, as Flask-Mail).

Sent once per message the extension hands to the relay (or records, when
``MAIL_SUPPRESS_SEND`` is on), with the :class:`~mailsvc.message.Message` as the
sender and ``app`` as a keyword (``None`` for a ``Mail(config=...)`` without an app)::

    from mailsvc.signals import email_dispatched

    @email_dispatched.connect
    def log_it(message, app):
        print("sent", message.subject)
"""

from __future__ import annotations

from blinker import Namespace

__all__ = ["email_dispatched"]

_signals = Namespace()
email_dispatched = _signals.signal("email-dispatched")
