"""core.time_limits: the soft time limit's signal, held off through a block and raised right after it."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from billiard.pool import soft_timeout_sighandler

from core.time_limits import SOFT_LIMIT_SIGNAL, SoftTimeLimitExceeded, soft_limit_deferred


@pytest.fixture(autouse=True)
def _prefork_child_handler() -> Iterator[None]:
    """The handler billiard installs in every pool child."""
    previous = signal.signal(SOFT_LIMIT_SIGNAL, soft_timeout_sighandler)
    yield
    signal.signal(SOFT_LIMIT_SIGNAL, previous)


def soft_limit_now() -> None:
    """What the pool's main process does at the soft limit."""
    os.kill(os.getpid(), SOFT_LIMIT_SIGNAL)


def test_without_the_block_the_soft_limit_lands_wherever_the_task_is() -> None:
    done = []
    with pytest.raises(SoftTimeLimitExceeded):
        soft_limit_now()
        done.append("the record")
    assert done == []


def test_a_soft_limit_during_the_block_is_raised_once_the_block_has_finished() -> None:
    done = []
    with pytest.raises(SoftTimeLimitExceeded):
        with soft_limit_deferred():
            soft_limit_now()
            done.append("the send")
            done.append("its record")
        done.append("the next send")
    assert done == ["the send", "its record"]


def test_a_block_without_a_soft_limit_runs_on_and_the_handler_is_back_after_it() -> None:
    with soft_limit_deferred():
        pass
    assert signal.getsignal(SOFT_LIMIT_SIGNAL) is soft_timeout_sighandler
    with pytest.raises(SoftTimeLimitExceeded):
        soft_limit_now()


def test_an_error_raised_by_the_block_wins_over_a_soft_limit_that_came_meanwhile() -> None:
    with pytest.raises(ConnectionError), soft_limit_deferred():
        soft_limit_now()
        raise ConnectionError("the server went away")
    assert signal.getsignal(SOFT_LIMIT_SIGNAL) is soft_timeout_sighandler


def test_where_the_signal_means_something_else_the_block_leaves_its_handler_alone() -> None:
    def dump_tracebacks(signum: int, frame: object) -> None: ...

    signal.signal(SOFT_LIMIT_SIGNAL, dump_tracebacks)  # as in a worker's main process
    with soft_limit_deferred():
        assert signal.getsignal(SOFT_LIMIT_SIGNAL) is dump_tracebacks
