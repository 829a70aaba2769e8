"""Benchmarks of consul-leader side by side with ``consul lock``; see :mod:`benchmarks.run`."""
