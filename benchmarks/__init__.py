"""Benchmarks of the crypto kernels; run them through ``benchmarks.suite``."""
