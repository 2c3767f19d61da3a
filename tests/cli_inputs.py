"""Inputs for ``batchpool bench --fn ... --inputs ...`` in tests/test_cli.py (not a test module)."""

from __future__ import annotations


def small_inputs() -> range:
    """A zero-argument callable returning an iterable: what --inputs accepts besides an iterable."""
    return range(500)
