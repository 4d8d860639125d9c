"""Conventions the code keeps, checked on its source: a close code is always named by its
``CloseCode`` constant (never a bare ``4408``), and every entry-point group is loaded through a
module constant named ``ENTRY_POINT_GROUP``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("s3db_core", "s3db_ws_plugin", "s3db_auth_drivers")


def modules() -> list[tuple[Path, ast.Module]]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found.append((path.relative_to(ROOT), ast.parse(path.read_text())))
    return found


def calls(tree: ast.Module, name: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (getattr(node.func, "attr", None) == name or getattr(node.func, "id", None) == name)
    ]


def test_close_codes_are_named_by_their_constant():
    bare = [
        f"{path}:{call.lineno}"
        for path, tree in modules()
        for call in calls(tree, "close")
        if call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, int)
    ]
    assert bare == [], f"close with CloseCode.<NAME>, not a number: {bare}"


def test_every_entry_point_group_is_one_constant_named_entry_point_group():
    loads = [(path, call) for path, tree in modules() for call in calls(tree, "load_entry_point")]
    assert len(loads) >= 4  # storage, brokers, rate limiters, auth drivers
    wrong = [
        f"{path}:{call.lineno}"
        for path, call in loads
        if not (isinstance(call.args[0], ast.Name) and call.args[0].id == "ENTRY_POINT_GROUP")
    ]
    assert wrong == [], f"name the group ENTRY_POINT_GROUP: {wrong}"


def test_what_a_change_brings_a_subscription_is_an_enum():
    import enum

    from s3db_ws_plugin.subscriptions import Delivery, SubscriptionRegistry

    assert issubclass(Delivery, enum.IntEnum)
    assert not Delivery.NOTHING and Delivery.LEAVE and Delivery.RECORD  # "any(...)" relies on it
    assert not hasattr(SubscriptionRegistry, "receivers")  # one rule: deliveries


def test_one_position_type_for_server_brokers_and_client():
    from s3db_core import Position
    from s3db_ws_plugin.client import Position as ClientPosition

    assert ClientPosition is Position
    position = Position(3, "e1")
    assert position.to_dict() == {"offset": 3, "epoch": "e1"}
    assert Position.from_value(position) is position
    assert Position.from_value({"offset": 3, "epoch": "e1"}) == position
    assert Position.from_value({"offset": True, "epoch": "e1"}) is None
