"""The version of uniterp, in one place (read by the package and by pyproject.toml)."""

__version__ = "0.2.0"
