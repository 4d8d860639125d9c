"""The seed's multi-tenant SaaS as a runnable example: ``python -m examples.multitenant``."""
