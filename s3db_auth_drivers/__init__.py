"""s3db_auth_drivers: pluggable authentication for s3db (JWT, API keys, third-party drivers)."""

from .base import AuthChain, AuthDriver, AuthError, Credentials, User, load_driver

__all__ = ["AuthChain", "AuthDriver", "AuthError", "Credentials", "User", "load_driver"]
