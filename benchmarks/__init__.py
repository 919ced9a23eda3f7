"""Performance benchmarks of the trials (``python -m benchmarks.bench``; see BENCHMARKS.md)."""
