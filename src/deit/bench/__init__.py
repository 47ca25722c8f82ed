"""Benchmarks of ours against the reference implementations (``deit bench``, ``benchmarks/``).

Peers (transformers, timm) are optional: without them the benchmarks time ours alone.
"""
