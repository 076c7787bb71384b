"""The bench's work: pack verification, print jobs, diagnostics, returns.

Jobs consume device events and produce reports through the outbox; they never touch a
serial port or socket directly.
"""
