"""The seed's collaborative editing as a runnable example: ``python -m examples.collab``."""
