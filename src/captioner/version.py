"""The package version, in a leaf module so any module can record it without an import cycle."""
__version__ = "0.1.0"
