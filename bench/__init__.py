"""Glassbox benchmarks: real processes, real sockets. Run `python bench/stream_bench.py --help`."""
