"""bench-agent: the edge daemon of a warehouse packing bench."""

__version__ = "0.1.0"
