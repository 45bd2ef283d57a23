"""Treadle's engine: definitions, DAG, executor, store and the command line.

This package never imports `web` (the dashboard builds on it, not the other way).
"""

__version__ = "0.1.0"
DEFAULT_DB = "sqlite:///.treadle/treadle.db"  # embedded SQLite, created on first start
