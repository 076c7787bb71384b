"""Protocol peers for every device, a local TLS broker and a central-system double.

Each simulator runs as its own process (``python -m simulators.NAME``) and is importable
from the tests.
"""
