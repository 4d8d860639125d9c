"""The seed's IoT data streaming as a runnable example: ``python -m examples.iot``."""
