"""Benchmarks: scripts that print numbers measured on real peers (no mocks)."""
