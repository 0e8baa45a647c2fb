"""``mailsvc suppress add|remove|list`` and ``mailsvc send --tenant/--stream`` as real processes, on both backends."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailsvc.outbox import open_outbox
from tests.pgtools import fresh_schema

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", "postgres"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    else:
        async with fresh_schema("supcli") as u:
            yield u


async def mailsvc(url: str, *args: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "MAILSVC_DATABASE_URL": url,
        "PYTHONPATH": str(ROOT),
        "MAIL_SERVER": "127.0.0.1",  # not dev mode: the CLI writes the configured outbox
        "MAIL_PORT": "9",
        "MAIL_DEFAULT_SENDER": "shop@example.com",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mailsvc.cli", *args, cwd=ROOT, env=env, stdout=-1, stderr=-1
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_add_list_remove_per_tenant(url: str) -> None:
    rc, out, err = await mailsvc(url, "suppress", "add", "Ann@Example.com", "bob@example.com", "--tenant", "shop")
    assert (rc, out.strip()) == (0, "2 added, 0 already there (stream *, manual)"), err
    rc, out, _ = await mailsvc(url, "suppress", "add", "ann@example.com", "--reason", "unsubscribe", "--tenant", "shop")
    assert "stream default, unsubscribe" in out
    rc, out, _ = await mailsvc(url, "suppress", "add", "cy@example.com")  # the open service's list
    rc, out, _ = await mailsvc(url, "suppress", "list", "--tenant", "shop", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["stream"], r["address"], r["reason"], r["source"]) for r in rows] == [
        ("*", "ann@example.com", "manual", "cli"),
        ("*", "bob@example.com", "manual", "cli"),
        ("default", "ann@example.com", "unsubscribe", "cli"),
    ]
    rc, out, _ = await mailsvc(url, "suppress", "list")
    assert [line.split("\t")[0] for line in out.splitlines()] == ["cy@example.com"]
    rc, out, _ = await mailsvc(url, "suppress", "list", "--tenant", "shop", "--reason", "unsubscribe")
    assert [line.split("\t")[:2] for line in out.splitlines()] == [["ann@example.com", "default"]]

    rc, _, err = await mailsvc(url, "suppress", "remove", "ANN@example.com", "--stream", "*", "--tenant", "shop")
    assert rc == 0, err
    rc, _, err = await mailsvc(url, "suppress", "remove", "ann@example.com", "--stream", "*", "--tenant", "shop")
    assert rc == 3 and "not on the list" in err
    rc, _, err = await mailsvc(url, "suppress", "remove", "cy@example.com", "--tenant", "shop")
    assert rc == 3  # another tenant's entry is not this one's to remove
    rc, _, err = await mailsvc(url, "suppress", "add", "not an address")
    assert rc == 2 and "address" in err
    rc, _, err = await mailsvc(url, "suppress", "add", "a@example.com", "--stream", "no spaces")
    assert rc == 2 and "--stream" in err


async def test_send_honours_the_tenant_s_list(url: str) -> None:
    await mailsvc(url, "suppress", "add", "ann@example.com", "--tenant", "shop")
    rc, out, err = await mailsvc(url, "send", "ann@example.com", "-s", "Hi", "-b", "x", "--tenant", "shop")
    assert rc == 0, err
    rc, out2, err = await mailsvc(url, "send", "ann@example.com", "-s", "Hi", "-b", "x", "--tenant", "globex")
    assert rc == 0, err
    async with open_outbox(url) as outbox:
        suppressed = await outbox.status(out.strip())
        other = await outbox.status(out2.strip())
    assert (suppressed.state, suppressed.recipients[0].last_reply) == ("suppressed", "suppressed: manual")
    assert other.state == "queued"
