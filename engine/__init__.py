"""batch-engine: send a very large list of HTTP requests fast, reliably, once in effect."""

__version__ = "0.1.0"
