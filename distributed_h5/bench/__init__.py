"""Benchmarks that print figures; no test depends on machine speed."""
