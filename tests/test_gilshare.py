"""The switch interval is lowered only while a bulk's thread work runs, and put back after the last user."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from mailsvc.web.gilshare import SHARE_INTERVAL, sharing


@pytest.fixture(autouse=True)
def default_interval() -> Iterator[float]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield 0.005
    sys.setswitchinterval(before)


def test_lowered_inside_and_restored_after() -> None:
    with sharing():
        assert sys.getswitchinterval() == pytest.approx(SHARE_INTERVAL)
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_overlapping_users_restore_once_after_the_last() -> None:
    first, second = sharing(), sharing()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert sys.getswitchinterval() == pytest.approx(SHARE_INTERVAL)  # the second still works
    second.__exit__(None, None, None)
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_restored_when_the_work_fails() -> None:
    with pytest.raises(ValueError), sharing():
        raise ValueError("bad body")
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_a_smaller_interval_set_by_the_operator_is_kept() -> None:
    sys.setswitchinterval(0.0001)
    with sharing():
        assert sys.getswitchinterval() == pytest.approx(0.0001, rel=0.05)
    assert sys.getswitchinterval() == pytest.approx(0.0001, rel=0.05)
