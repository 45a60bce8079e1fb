"""The package version: one place, read by setuptools (pyproject.toml), the CLI, checkpoints and
downloads' User-Agent."""

__version__ = "0.1.0"
