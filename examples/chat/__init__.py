"""The seed's chat application as a runnable example: ``python -m examples.chat``."""
