"""reasonloop: post-train language models to reason on problems with checkable answers."""

__version__ = "0.1.0"
