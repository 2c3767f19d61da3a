"""Claim tokens: a batch is started by its worker or taken back by the parent, never both."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from batchpool.transport.control import Control


@given(st.lists(st.sampled_from(["send", "start", "reclaim"]), max_size=40))
def test_each_batch_is_started_or_taken_back_exactly_once(ops: list[str]) -> None:
    """Model: the parent sends batches in order and takes back only the newest unstarted one
    (and sends nothing until the worker has skipped it); the worker starts them in order."""
    control = Control()
    try:
        sent: list[int] = []  # batch numbers in the order sent
        started: list[int] = []
        reclaimed: list[int] = []
        skipped: list[int] = []
        next_to_read = 0
        waiting_for_skip = False
        for op in ops:
            if op == "send" and not waiting_for_skip:
                sent.append(len(sent))
                control.sent()
            elif op == "start" and next_to_read < len(sent):
                batch = sent[next_to_read]
                next_to_read += 1
                if control.claim():
                    started.append(batch)
                else:
                    skipped.append(batch)
                    waiting_for_skip = False
            elif op == "reclaim" and sent and not waiting_for_skip and sent[-1] not in reclaimed:
                if control.reclaim():
                    reclaimed.append(sent[-1])
                    waiting_for_skip = True
        assert set(started).isdisjoint(reclaimed)
        assert skipped == [b for b in reclaimed if b < next_to_read]
        assert control.unstarted() == len(sent) - next_to_read - len([b for b in reclaimed if b >= next_to_read])
    finally:
        control.close()


def test_the_yield_bell_is_read_once() -> None:
    control = Control()
    try:
        assert not control.yield_requested()
        control.ask_yield()
        control.ask_yield()
        assert control.yield_requested() and not control.yield_requested()
    finally:
        control.close()
