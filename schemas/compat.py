"""Backward-compatibility check of the current messages against a committed contract.

Breaking (new code could not read data written under the old contract, or old readers
could not read what new code writes): a removed message type, a removed field, a retyped
field, a new required field, a removed enum value, a tightened bound. Additive changes
(a new type, a new optional field, a loosened bound) pass. A schema version bump is
allowed when an upcaster lifts the old version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.registry import DEFAULT_REGISTRY, MessageRegistry

_TIGHTER_IF_LARGER = ("minLength", "minimum", "exclusiveMinimum", "minItems")
_TIGHTER_IF_SMALLER = ("maxLength", "maximum", "exclusiveMaximum", "maxItems")
_SHAPE_KEYS = ("type", "format", "const", "pattern")


@dataclass(frozen=True)
class Incompatibility:
    message_type: str
    path: str
    problem: str

    def __str__(self) -> str:
        where = f"{self.message_type}.{self.path}" if self.path else self.message_type
        return f"{where}: {self.problem}"


def check(
    old: dict[str, dict[str, Any]],
    new: dict[str, dict[str, Any]],
    registry: MessageRegistry = DEFAULT_REGISTRY,
) -> list[Incompatibility]:
    """Every breaking difference between two contracts (type name -> JSON Schema)."""
    problems: list[Incompatibility] = []
    for name, old_schema in sorted(old.items()):
        new_schema = new.get(name)
        if new_schema is None:
            problems.append(Incompatibility(name, "", "message type removed"))
            continue
        old_version = old_schema.get("x-sagaline-schema-version", 1)
        new_version = new_schema.get("x-sagaline-schema-version", 1)
        if new_version < old_version:
            problems.append(
                Incompatibility(name, "", f"schema version went back from {old_version} to {new_version}")
            )
        elif new_version > old_version:
            missing = [v for v in range(old_version, new_version) if (name, v) not in registry.upcasters]
            if missing:
                problems.append(
                    Incompatibility(
                        name,
                        "",
                        f"version {old_version} -> {new_version} without upcaster from v{missing[0]}",
                    )
                )
        else:
            _compare(
                name,
                "",
                _resolve(old_schema, old_schema),
                _resolve(new_schema, new_schema),
                old_schema,
                new_schema,
                problems,
            )
    return problems


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        resolved: dict[str, Any] = root["$defs"][ref.removeprefix("#/$defs/")]
        return resolved
    return node


def _variants(node: dict[str, Any], root: dict[str, Any]) -> list[dict[str, Any]]:
    if "anyOf" in node:
        return [_resolve(v, root) for v in node["anyOf"]]
    return [node]


def _signature(node: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(str(node.get(k)) for k in _SHAPE_KEYS)


def _compare(
    name: str,
    path: str,
    old: dict[str, Any],
    new: dict[str, Any],
    old_root: dict[str, Any],
    new_root: dict[str, Any],
    problems: list[Incompatibility],
) -> None:
    def report(problem: str, where: str = path) -> None:
        problems.append(Incompatibility(name, where, problem))

    old_variants, new_variants = _variants(old, old_root), _variants(new, new_root)
    if len(old_variants) > 1 or len(new_variants) > 1:
        old_sigs = {_signature(v) for v in old_variants}
        new_sigs = {_signature(v) for v in new_variants}
        if not old_sigs <= new_sigs:
            report(f"type changed from {_describe(old_variants)} to {_describe(new_variants)}")
        return
    if _signature(old) != _signature(new):
        report(f"type changed from {_describe([old])} to {_describe([new])}")
        return
    if "enum" in old or "enum" in new:
        removed = set(old.get("enum", [])) - set(new.get("enum", old.get("enum", [])))
        if removed:
            report(f"enum values removed: {sorted(removed)}")
    for key in _TIGHTER_IF_LARGER:
        if key in new and new[key] > old.get(key, float("-inf")):
            report(f"{key} tightened from {old.get(key)} to {new[key]}")
    for key in _TIGHTER_IF_SMALLER:
        if key in new and new[key] < old.get(key, float("inf")):
            report(f"{key} tightened from {old.get(key)} to {new[key]}")
    if old.get("type") == "object":
        old_props, new_props = old.get("properties", {}), new.get("properties", {})
        for field in old_props:
            if field not in new_props:
                report("field removed", _join(path, field))
        for field in set(new.get("required", [])) - set(old.get("required", [])):
            report(
                "new required field" if field not in old_props else "field became required",
                _join(path, field),
            )
        for field in old_props.keys() & new_props.keys():
            _compare(
                name,
                _join(path, field),
                _resolve(old_props[field], old_root),
                _resolve(new_props[field], new_root),
                old_root,
                new_root,
                problems,
            )
    if old.get("type") == "array" and "items" in old and "items" in new:
        _compare(
            name,
            _join(path, "[]"),
            _resolve(old["items"], old_root),
            _resolve(new["items"], new_root),
            old_root,
            new_root,
            problems,
        )


def _join(path: str, field: str) -> str:
    return f"{path}.{field}" if path else field


def _describe(variants: list[dict[str, Any]]) -> str:
    return " | ".join(str(v.get("type") or v.get("const") or v.get("enum") or "?") for v in variants)
