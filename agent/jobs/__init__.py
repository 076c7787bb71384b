"""The bench's jobs: print jobs (``agent.jobs.print_*``), documents (what a print job
prints, checked and rendered for the printer's language: :mod:`.documents`, with
:mod:`.raster` for PNG and PDF pictures and :mod:`.slip` for packing slips), and later
pack verification, diagnostics and returns.

Jobs consume device events and produce reports through the outbox; they never touch a
serial port or socket directly.
"""
