"""Issue 14, friction 2: sending from synchronous code (threads, Celery tasks, scripts) with one ``Mail``."""

from __future__ import annotations

import asyncio
import threading

import pytest
from quart import Quart

from mailsvc import Mail, Message
from tests.servers import RecordingHandler, threaded_smtp_server


def app_mail(port: int) -> Mail:
    app = Quart(__name__)
    app.config.update(MAIL_SERVER="127.0.0.1", MAIL_PORT=port, MAIL_DEFAULT_SENDER="shop@example.com")
    return Mail(app)


def msg(n: int) -> Message:
    return Message(f"m{n}", recipients=["ann@example.com"], body="x")


def test_repeated_asyncio_run_with_one_mail_works_every_time() -> None:
    """Each asyncio.run has its own loop; the pool of the last one must not be reused (it used to be)."""
    handler = RecordingHandler()
    with threaded_smtp_server(handler) as port:
        mail = app_mail(port)
        for n in range(4):
            assert asyncio.run(mail.send(msg(n))).ok
    assert [str(r.message["Subject"]) for r in handler.received] == ["m0", "m1", "m2", "m3"]


def test_send_sync_from_threads_and_scripts() -> None:
    handler = RecordingHandler()
    with threaded_smtp_server(handler) as port:
        mail = app_mail(port)
        assert mail.send_sync(msg(0)).ok  # a script: no loop anywhere
        errors: list[BaseException] = []

        def task(n: int) -> None:  # a worker thread (a Celery task runs like this)
            try:
                assert mail.send_sync(msg(n)).ok
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=task, args=(n,)) for n in range(1, 5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
        results = mail.send_many_sync([msg(n) for n in range(5, 8)])
        assert all(r.ok for r in results)
    assert sorted(str(r.message["Subject"]) for r in handler.received) == [f"m{n}" for n in range(8)]


async def test_send_sync_inside_a_loop_says_to_await() -> None:
    mail = app_mail(1)
    with pytest.raises(RuntimeError, match=r"await mail.send\("):
        mail.send_sync(msg(0))


async def test_with_mail_connect_says_async_with() -> None:
    mail = app_mail(1)
    with pytest.raises(TypeError, match="async with mail.connect"):
        with mail.connect():  # what a Flask-Mail user writes
            pass
