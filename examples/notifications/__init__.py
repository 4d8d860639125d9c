"""The seed's live notifications as a runnable example: ``python -m examples.notifications``."""
