"""The seed's real-time dashboard as a runnable example: ``python -m examples.dashboard``."""
