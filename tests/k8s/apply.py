"""Server-side apply and managedFields, as kube-apiserver does them (structured-merge-diff, simplified).

Every write records which manager owns which fields (``metadata.managedFields``, FieldsV1). An apply
(``PATCH`` with ``application/apply-patch+yaml``) merges the applied configuration into the live object:
maps field by field, ``list-type=map`` lists by key, sets by value, atomic lists whole; fields the manager
applied before but no longer applies are removed when nobody else owns them; a field another manager owns
with a different value is a conflict (409) unless ``force=true``, which takes it over.

Field identity: CRs use their schema's ``x-kubernetes-list-type``/``-map-keys`` (unset means atomic);
builtins use the merge keys below (what their OpenAPI schemas declare for the fields synthrec touches).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

Path = tuple[str, ...]  # elements: "f:name", 'k:{"name":"x"}', 'v:"x"'
# Builtin list fields that merge by key (from the Kubernetes OpenAPI x-kubernetes-list-map-keys).
BUILTIN_LIST_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "ports": ("containerPort", "protocol"),
    "ownerReferences": ("uid",),
    "imagePullSecrets": ("name",),
    "versions": ("name",),
    "conditions": ("type",),
}
BUILTIN_SETS = frozenset({"finalizers"})
NOT_MANAGED_METADATA = frozenset(
    {
        "name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
        "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink", "generateName",
    }
)  # fmt: skip
ListTypeOf = Callable[[Path, str], tuple[str, tuple[str, ...]]]  # (parent path, field) -> (type, keys)


class ApplyConflict(Exception):
    def __init__(self, conflicts: list[tuple[str, str]]) -> None:  # (manager description, path)
        self.conflicts = conflicts
        super().__init__(conflict_message(conflicts))


def conflict_message(conflicts: list[tuple[str, str]]) -> str:
    if len(conflicts) == 1:
        manager, path = conflicts[0]
        return f"Apply failed with 1 conflict: conflict with {manager}: {path}"
    lines: list[str] = []
    for manager in sorted({m for m, _ in conflicts}):
        lines.append(f"conflicts with {manager}:")
        lines += [f"- {p}" for m, p in conflicts if m == manager]
    return f"Apply failed with {len(conflicts)} conflicts: " + "\n".join(lines)


def builtin_list_type(_: Path, name: str) -> tuple[str, tuple[str, ...]]:
    if name in BUILTIN_SETS:
        return "set", ()
    if name in BUILTIN_LIST_KEYS:
        return "map", BUILTIN_LIST_KEYS[name]
    return "atomic", ()


def schema_list_type(schema: dict[str, Any]) -> ListTypeOf:
    """List types of a CR from its structural schema (metadata lists as for builtins)."""

    def lookup(parent: Path, name: str) -> tuple[str, tuple[str, ...]]:
        if parent[:1] == ("f:metadata",):
            return builtin_list_type(parent, name)
        node: dict[str, Any] | None = schema
        for element in (*parent, f"f:{name}"):
            if node is None:
                break
            if element.startswith("f:"):
                props = node.get("properties") or {}
                key = element[2:]
                node = props.get(key) if key in props else node.get("additionalProperties")
                node = node if isinstance(node, dict) else None
            else:
                items = node.get("items")
                node = items if isinstance(items, dict) else None
        if node is None:
            return "atomic", ()
        list_type = node.get("x-kubernetes-list-type", "atomic")
        return list_type, tuple(node.get("x-kubernetes-list-map-keys") or ())

    return lookup


def _item_element(item: Any, list_type: str, keys: tuple[str, ...], index: int) -> str:
    if list_type == "map" and isinstance(item, dict):
        return "k:" + json.dumps({k: item.get(k) for k in keys if k in item}, separators=(",", ":"))
    if list_type == "set":
        return "v:" + json.dumps(item, separators=(",", ":"))
    return f"i:{index}"


def leaf_paths(obj: Any, list_type: ListTypeOf, path: Path = (), *, top: bool = True) -> set[Path]:
    """The fields a value sets, as leaf paths (an atomic list or an empty map is one leaf)."""
    out: set[Path] = set()
    if isinstance(obj, dict):
        if not obj and not top:
            return {path}
        for key, value in obj.items():
            if top and key in ("apiVersion", "kind"):
                continue
            if path == ("f:metadata",) and key in NOT_MANAGED_METADATA:
                continue
            here = (*path, f"f:{key}")
            if isinstance(value, list):
                kind, keys = list_type(path, key)
                if kind == "atomic":
                    out.add(here)
                    continue
                for i, item in enumerate(value):
                    element = (*here, _item_element(item, kind, keys, i))
                    if kind == "map" and isinstance(item, dict):
                        out.add((*element, "."))
                        out |= leaf_paths(item, list_type, element, top=False)
                    else:
                        out.add(element)
            else:
                out |= leaf_paths(value, list_type, here, top=False)
        return out
    return {path}


def _value_at(obj: Any, path: Path, list_type: ListTypeOf) -> tuple[bool, Any]:
    current = obj
    for i, element in enumerate(path):
        if element == ".":
            return True, None  # the item's own presence
        if element.startswith("f:"):
            if not isinstance(current, dict) or element[2:] not in current:
                return False, None
            current = current[element[2:]]
            continue
        if not isinstance(current, list) or i == 0:
            return False, None
        kind, keys = list_type(path[: i - 1], path[i - 1][2:])
        found = [item for n, item in enumerate(current) if _item_element(item, kind, keys, n) == element]
        if not found:
            return False, None
        current = found[0]
    return True, current


def path_string(path: Path) -> str:
    """fieldpath.Path.String(): ``.spec.replicas``, ``.spec.containers[name="c"]``, ``[="x"]``."""
    out = ""
    for element in path:
        if element == ".":
            continue
        kind, rest = element[:2], element[2:]
        if kind == "f:":
            out += f".{rest}"
        elif kind == "k:":
            keys = json.loads(rest)
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in keys.items()) + "]"
        elif kind == "v:":
            out += f"[={rest}]"
        else:
            out += f"[{rest}]"
    return out


def fields_v1(paths: set[Path]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path in sorted(paths):
        node = tree
        for element in path:
            node = node.setdefault(element, {})
    return tree


def paths_of(fields: dict[str, Any], prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for key, sub in fields.items():
        if sub:
            out |= paths_of(sub, (*prefix, key))
        else:
            out.add((*prefix, key))
    return out


def _merge(live: Any, applied: Any, list_type: ListTypeOf, path: Path) -> Any:
    if isinstance(live, dict) and isinstance(applied, dict):
        out = dict(live)
        for key, value in applied.items():
            if key in out and isinstance(value, list) and isinstance(out[key], list):
                kind, keys = list_type(path, key)
                out[key] = _merge_list(out[key], value, kind, keys, list_type, (*path, f"f:{key}"))
            elif key in out:
                out[key] = _merge(out[key], value, list_type, (*path, f"f:{key}"))
            else:
                out[key] = copy.deepcopy(value)
        return out
    return copy.deepcopy(applied)


def _merge_list(
    live: list[Any], applied: list[Any], kind: str, keys: tuple[str, ...], lt: ListTypeOf, path: Path
) -> list[Any]:
    if kind == "set":
        return [*live, *(v for v in applied if v not in live)]
    if kind != "map":
        return copy.deepcopy(applied)
    out = list(live)
    for item in applied:
        element = _item_element(item, kind, keys, 0)
        for i, existing in enumerate(out):
            if _item_element(existing, kind, keys, i) == element:
                out[i] = _merge(existing, item, lt, (*path, element))
                break
        else:
            out.append(copy.deepcopy(item))
    return out


def _remove(obj: Any, path: Path, list_type: ListTypeOf, parent: Path = ()) -> Any:
    """``obj`` without the field at ``path`` (a list item when the path ends at the item)."""
    if not path or not isinstance(obj, dict) or not path[0].startswith("f:"):
        return obj
    head, rest = path[0], path[1:]
    key = head[2:]
    if key not in obj:
        return obj
    out = dict(obj)
    if not rest:
        del out[key]
        return out
    value = obj[key]
    if isinstance(value, list):
        kind, keys = list_type(parent, key)
        items = []
        for i, item in enumerate(value):
            if _item_element(item, kind, keys, i) == rest[0]:
                if rest[1:] in ((), (".",)):
                    continue
                item = _remove(item, rest[1:], list_type, (*parent, head, rest[0]))
            items.append(item)
        out[key] = items
    else:
        out[key] = _remove(value, rest, list_type, (*parent, head))
    return out


def manager_label(entry: dict[str, Any]) -> str:
    label = json.dumps(entry["manager"])
    if entry.get("subresource"):
        label += f" with subresource {json.dumps(entry['subresource'])}"
    if entry.get("operation") == "Update":
        label += f" using {entry.get('apiVersion')}"
    return label


def apply(
    live: dict[str, Any] | None,
    config: dict[str, Any],
    manager: str,
    *,
    force: bool,
    list_type: ListTypeOf,
    api_version: str,
    now: str,
) -> dict[str, Any]:
    """The object after ``manager`` applies ``config`` to ``live`` (None: create), managedFields included.

    Raises ApplyConflict when another manager owns an applied field with a different value.
    """
    base = copy.deepcopy(live) if live is not None else {}
    entries = [dict(e) for e in (base.get("metadata") or {}).get("managedFields") or []]
    applied = leaf_paths(config, list_type)
    mine = next((e for e in entries if e["manager"] == manager and e["operation"] == "Apply"), None)
    previously = paths_of(mine["fieldsV1"]) if mine else set()
    conflicts: list[tuple[str, str]] = []
    taken: dict[int, set[Path]] = {}
    for index, entry in enumerate(entries):
        if entry is mine or entry.get("subresource"):
            continue
        owned = paths_of(entry.get("fieldsV1") or {}) & applied
        for path in sorted(owned):
            if path[-1:] == (".",):
                continue
            _, live_value = _value_at(base, path, list_type)
            _, new_value = _value_at(config, path, list_type)
            if live_value != new_value:
                if force:
                    taken.setdefault(index, set()).add(path)
                else:
                    conflicts.append((manager_label(entry), path_string(path)))
    if conflicts:
        raise ApplyConflict(conflicts)
    merged = _merge(base, config, list_type, ())
    others = set()
    for entry in entries:
        if entry is not mine:
            others |= paths_of(entry.get("fieldsV1") or {})
    for path in sorted(previously - applied, key=len, reverse=True):
        if path not in others:
            merged = _remove(merged, path, list_type)
    new_entries = []
    for index, entry in enumerate(entries):
        if entry is mine:
            continue
        if index in taken:
            remaining = paths_of(entry["fieldsV1"]) - taken[index]
            if not remaining:
                continue
            entry = {**entry, "fieldsV1": fields_v1(remaining)}
        new_entries.append(entry)
    new_entries.append(
        {
            "manager": manager,
            "operation": "Apply",
            "apiVersion": api_version,
            "time": now,
            "fieldsType": "FieldsV1",
            "fieldsV1": fields_v1(applied),
        }
    )
    merged.setdefault("metadata", {})["managedFields"] = new_entries
    return merged


def record_update(
    old: dict[str, Any] | None,
    new: dict[str, Any],
    manager: str,
    *,
    list_type: ListTypeOf,
    api_version: str,
    now: str,
    subresource: str | None = None,
) -> list[dict[str, Any]]:
    """managedFields after a non-apply write: the fields it changed now belong to ``manager``."""
    entries = [dict(e) for e in ((old or {}).get("metadata") or {}).get("managedFields") or []]
    before = leaf_paths(_strip(old, subresource), list_type) if old is not None else set()
    after = leaf_paths(_strip(new, subresource), list_type)
    changed = {
        p for p in after if p not in before or _value_at(old, p, list_type) != _value_at(new, p, list_type)
    }
    gone = before - after
    out = []
    mine: dict[str, Any] | None = None
    for entry in entries:
        paths = paths_of(entry.get("fieldsV1") or {})
        is_mine = (
            entry["manager"] == manager
            and entry["operation"] == "Update"
            and entry.get("subresource") == subresource
        )
        if is_mine:
            mine = entry
            continue
        if entry.get("subresource") == subresource:
            paths = paths - changed - gone
        if paths:
            out.append({**entry, "fieldsV1": fields_v1(paths)})
    owned = (paths_of(mine["fieldsV1"]) - gone if mine else set()) | changed
    if owned:
        entry = {
            "manager": manager,
            "operation": "Update",
            "apiVersion": api_version,
            "time": now,
            "fieldsType": "FieldsV1",
            "fieldsV1": fields_v1(owned),
        }
        if subresource:
            entry["subresource"] = subresource
        out.append(entry)
    return out


def _strip(obj: dict[str, Any] | None, subresource: str | None) -> dict[str, Any]:
    """The part of an object a write through ``subresource`` (or the main resource) manages."""
    obj = obj or {}
    if subresource == "status":
        return {"status": obj.get("status")} if "status" in obj else {}
    return {k: v for k, v in obj.items() if k != "status"}
