"""Runnable example apps: ``python -m examples.<name>``."""
