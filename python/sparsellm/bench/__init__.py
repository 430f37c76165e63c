"""Benchmarks: ``python -m sparsellm.bench {spmm}``."""
