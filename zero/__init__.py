"""zero: an infinite local disk backed by a bounded cache and pooled remotes."""

__version__ = "0.1.0"
