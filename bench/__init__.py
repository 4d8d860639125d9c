"""Benchmarks for SPEC §9: ratios against baselines measured in the same run (``make bench``)."""
