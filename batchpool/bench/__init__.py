"""Benchmark workloads and the runner behind ``batchpool bench``."""
