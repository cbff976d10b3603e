"""core.interruptions: the soft time limit's signal and a termination, held off through a block and acted on after it.

The handlers are billiard's own, installed as in every prefork pool child.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from billiard.common import _shutdown_cleanup, clear_terminate_handler_fired
from billiard.pool import soft_timeout_sighandler

from core.interruptions import SOFT_LIMIT_SIGNAL, TERMINATE_SIGNAL, SoftTimeLimitExceeded, uninterrupted


@pytest.fixture(autouse=True)
def _prefork_child_handlers() -> Iterator[None]:
    """The handlers billiard installs in every pool child: soft limit, and termination (its finally-running SystemExit)."""
    soft = signal.signal(SOFT_LIMIT_SIGNAL, soft_timeout_sighandler)
    term = signal.signal(TERMINATE_SIGNAL, _shutdown_cleanup)
    yield
    signal.signal(SOFT_LIMIT_SIGNAL, soft)
    signal.signal(TERMINATE_SIGNAL, term)
    clear_terminate_handler_fired()  # billiard's handler notes that it ran, for its pool loop


def soft_limit_now() -> None:
    """What the pool's main process does at the soft limit."""
    os.kill(os.getpid(), SOFT_LIMIT_SIGNAL)


def terminate_now() -> None:
    """What the worker does to a running task when its broker connection drops (Request.cancel)."""
    os.kill(os.getpid(), TERMINATE_SIGNAL)


def test_without_the_block_the_soft_limit_lands_wherever_the_task_is() -> None:
    done = []
    with pytest.raises(SoftTimeLimitExceeded):
        soft_limit_now()
        done.append("the record")
    assert done == []


def test_a_soft_limit_during_the_block_is_raised_once_the_block_has_finished() -> None:
    done = []
    with pytest.raises(SoftTimeLimitExceeded):
        with uninterrupted():
            soft_limit_now()
            done.append("the send")
            done.append("its record")
        done.append("the next send")
    assert done == ["the send", "its record"]


def test_a_block_without_a_signal_runs_on_and_the_handlers_are_back_after_it() -> None:
    with uninterrupted():
        pass
    assert signal.getsignal(SOFT_LIMIT_SIGNAL) is soft_timeout_sighandler
    assert signal.getsignal(TERMINATE_SIGNAL) is _shutdown_cleanup
    with pytest.raises(SoftTimeLimitExceeded):
        soft_limit_now()


def test_an_error_raised_by_the_block_wins_over_a_soft_limit_that_came_meanwhile() -> None:
    with pytest.raises(ConnectionError), uninterrupted():
        soft_limit_now()
        raise ConnectionError("the server went away")
    assert signal.getsignal(SOFT_LIMIT_SIGNAL) is soft_timeout_sighandler


def test_without_the_block_a_termination_lands_wherever_the_task_is() -> None:
    done = []
    with pytest.raises(SystemExit):
        terminate_now()
        done.append("the record")
    assert done == []


def test_a_termination_during_the_block_stops_the_task_once_the_block_has_finished() -> None:
    done = []
    with pytest.raises(SystemExit):
        with uninterrupted():
            terminate_now()
            done.append("the send")
            done.append("its record")
        done.append("the next send")
    assert done == ["the send", "its record"]


def test_a_termination_wins_over_a_soft_limit_and_over_the_blocks_own_error() -> None:
    with pytest.raises(SystemExit) as stopped, uninterrupted():
        soft_limit_now()
        terminate_now()
        raise ConnectionError("the server went away")
    assert isinstance(stopped.value.__context__, ConnectionError)


def test_a_termination_with_the_default_action_ends_the_process_after_the_block() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: SIGTERM's default action, as before billiard installs its handler
        try:
            signal.signal(TERMINATE_SIGNAL, signal.SIG_DFL)
            with uninterrupted():
                terminate_now()
                os.write(write, b"recorded")
            os.write(write, b", then went on")
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    written = os.read(read, 100)
    os.close(read)
    assert (written, os.WIFSIGNALED(status) and os.WTERMSIG(status)) == (b"recorded", TERMINATE_SIGNAL)


def test_where_the_signals_mean_something_else_the_block_leaves_their_handlers_alone() -> None:
    def dump_tracebacks(signum: int, frame: object) -> None: ...

    def warm_shutdown(signum: int, frame: object) -> None: ...

    signal.signal(SOFT_LIMIT_SIGNAL, dump_tracebacks)  # as in a worker's main process
    signal.signal(TERMINATE_SIGNAL, warm_shutdown)
    with uninterrupted():
        assert signal.getsignal(SOFT_LIMIT_SIGNAL) is dump_tracebacks
        assert signal.getsignal(TERMINATE_SIGNAL) is warm_shutdown
