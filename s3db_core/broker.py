"""Kept so ``from s3db_core.broker import LocalBroker, load_broker`` still works: brokers live in
the ``s3db_core.brokers`` package now."""

from .brokers import Broker, Listener, Position, load_broker
from .brokers.local import LocalBroker

__all__ = ["Broker", "Listener", "LocalBroker", "Position", "load_broker"]
