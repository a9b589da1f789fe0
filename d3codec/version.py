"""The version of d3codec (the package, not the archive format: see d3codec.format.container)."""

__version__ = "0.1.0"
