"""PoolState: legal transitions, refusals, and that every change wakes its watchers."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchpool.errors import ShutdownError
from batchpool.state import EXIT_MESSAGE, SHUTDOWN_MESSAGE, Phase, PoolState


def test_pause_resume_and_close_from_paused() -> None:
    state = PoolState(2)
    assert state.accepting and not state.paused
    assert state.pause() and state.paused and state.accepting
    assert not state.pause()  # already paused
    assert state.resume() and not state.paused
    assert state.pause()
    assert state.close()  # closing a paused pool drains it: it is no longer paused
    assert state.phase == Phase.CLOSING and not state.paused and state.closing
    assert not state.resume() and not state.pause()


def test_refusals_name_what_happened() -> None:
    state = PoolState(1)
    assert state.refusal() is None
    state.close(EXIT_MESSAGE)
    refusal = state.refusal()
    assert isinstance(refusal, RuntimeError) and str(refusal) == EXIT_MESSAGE
    broken = PoolState(1)
    assert broken.break_(RuntimeError("initializer failed"))
    assert str(broken.refusal()) == "initializer failed" and broken.stopped
    assert broken.abort()
    assert isinstance(broken.error, ShutdownError)
    assert not broken.break_(RuntimeError("again"))  # ABORTED is final


def test_a_signal_handler_refuses_without_the_lock() -> None:
    state = PoolState(1)
    with state.lock:  # the handler's thread may hold it: the flag needs none
        state.close_requested = True
    assert not state.accepting
    assert str(state.refusal()) == SHUTDOWN_MESSAGE


def test_every_transition_wakes_watchers_and_waiters() -> None:
    state = PoolState(1)
    calls: list[str] = []
    state.watch(lambda: calls.append(state.phase.name))
    cond = state.condition()
    woke = threading.Event()

    def waiter() -> None:
        with state.lock:
            while state.phase != Phase.CLOSING:
                cond.wait(10)
        woke.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    state.pause()
    state.set_target(3)
    state.close()
    thread.join(10)
    assert woke.is_set()
    assert calls == ["PAUSED", "PAUSED", "CLOSING"] and state.target_workers == 3


@given(st.lists(st.sampled_from(["pause", "resume", "close", "break", "abort"]), max_size=20))
def test_a_pool_only_moves_forward_but_for_pause_and_resume(ops: list[str]) -> None:
    state = PoolState(1)
    last = state.phase
    for op in ops:
        if op == "pause":
            state.pause()
        elif op == "resume":
            state.resume()
        elif op == "close":
            state.close()
        elif op == "break":
            state.break_(RuntimeError("x"))
        else:
            state.abort()
        now = state.phase
        if {last, now} != {Phase.RUNNING, Phase.PAUSED}:
            assert now >= last
        if last >= Phase.CLOSING:
            assert now >= Phase.CLOSING and state.refusal() is not None
        last = now


def test_abort_keeps_the_refusal_of_a_closed_pool() -> None:
    state = PoolState(1)
    state.close(EXIT_MESSAGE)
    state.abort(ShutdownError(1.0))
    assert str(state.refusal()) == EXIT_MESSAGE
    with pytest.raises(RuntimeError):
        raise state.refusal()  # type: ignore[misc]
