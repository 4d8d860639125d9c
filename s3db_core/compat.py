"""Whether a resource's new definition can read and update the records stored under its old one.

A definition is *compatible* with the stored one when every record written under the old
definition is still a valid record under the new one. These changes are compatible:

* adding an optional field, or a required field that has a default;
* making a required field optional; adding, removing or changing a default;
* changing rules (``min``, ``max``, ``maxlength``, ``enum``...): records that break a tighter
  rule are reported by ``ValidationError`` when they are next updated;
* turning ``timestamps`` on; changing ``behavior`` (every stored layout stays readable).

These are *incompatible*, because stored records would no longer validate or be found:

* changing a field's type (``string`` to ``number``, an object's nested fields' types, an
  array's item type);
* adding a required field without a default, or making an optional field required without one;
* removing a field (stored records still carry it, and an update would reject it as unknown);
* turning ``timestamps`` off (stored records carry ``createdAt``/``updatedAt``);
* adding, removing or changing a partition (stored records have no reference, or a stale one,
  under the new partition).

``create_resource`` raises :class:`IncompatibleSchemaError` for an incompatible change when the
resource already holds records; ``create_resource(..., migrate=True)`` accepts the new definition
anyway (then rewrite the stored records to fit it).
"""

from __future__ import annotations

from typing import Any

from .errors import S3dbError
from .schema import FieldSpec, Schema


class IncompatibleSchemaError(S3dbError, ValueError):
    """A resource was redefined in a way its stored records do not fit. ``changes`` lists each
    incompatible difference as a sentence."""

    code = "INCOMPATIBLE_SCHEMA"

    def __init__(self, resource: str, changes: list[str]) -> None:
        self.resource = resource
        self.changes = changes
        super().__init__(
            f"resource {resource!r} holds records that its new definition does not fit: "
            + "; ".join(changes)
            + ". Pass migrate=True to create_resource to accept the new definition anyway, "
            "then rewrite the stored records to fit it"
        )


def _field_changes(old: dict[str, FieldSpec], new: dict[str, FieldSpec]) -> list[str]:
    changes = []
    for name, spec in new.items():
        before = old.get(name)
        if before is None:
            if spec.required and not spec.has_default:
                changes.append(f"new field {spec.path!r} is required and has no default")
            continue
        if (before.props is None) != (spec.props is None) or before.type != spec.type:
            changes.append(f"field {spec.path!r} changes type from {before.type} to {spec.type}")
            continue
        if before.items != spec.items:
            changes.append(
                f"array field {spec.path!r} changes its items from {before.items} to {spec.items}"
            )
        if spec.required and not before.required and not spec.has_default:
            changes.append(f"field {spec.path!r} becomes required and has no default")
        if before.props is not None and spec.props is not None:
            changes.extend(_field_changes(before.props, spec.props))
    for name, before in old.items():
        if name not in new:
            changes.append(f"field {before.path!r} is removed")
    return changes


def incompatible_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Each incompatible difference between two definitions (as stored in ``s3db.json``)."""
    try:
        old_schema = Schema(old.get("attributes", {}), timestamps=bool(old.get("timestamps")))
    except (ValueError, TypeError):  # written by another tool or version: nothing to compare
        return []
    new_schema = Schema(new.get("attributes", {}), timestamps=bool(new.get("timestamps")))
    changes = _field_changes(old_schema.fields, new_schema.fields)
    if old.get("timestamps") and not new.get("timestamps"):
        changes.append("timestamps are turned off")
    old_parts, new_parts = old.get("partitions") or {}, new.get("partitions") or {}
    for name in sorted(set(old_parts) | set(new_parts)):
        if name not in new_parts:
            changes.append(f"partition {name!r} is removed")
        elif name not in old_parts:
            changes.append(f"partition {name!r} is added")
        elif old_parts[name] != new_parts[name]:
            changes.append(f"partition {name!r} changes its fields")
    return changes
