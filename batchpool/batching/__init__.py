"""Lanes of waiting jobs and the policy that cuts them into batches."""

from .lanes import Batcher as Batcher
from .lanes import lane_key as lane_key

__all__ = ["Batcher", "lane_key"]
