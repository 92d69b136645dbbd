"""The three PATCH flavours of the Kubernetes API, applied to plain JSON dicts (inputs are not mutated)."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import jsonpointer


class PatchError(ValueError):
    """A patch that cannot apply: the API server answers 422 Unprocessable Entity."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, ``None`` deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# List fields that a strategic merge patch merges by a key instead of replacing (the common ones of
# Pod, Job and metadata). Everything else behaves as in a JSON merge patch.
STRATEGIC_MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "conditions": "type",
    "ownerReferences": "uid",
    "tolerations": "key",
    "imagePullSecrets": "name",
}


def strategic_merge_patch(target: Any, patch: Any, field: str | None = None) -> Any:
    """An approximation of strategic merge: JSON merge plus keyed merging of well-known lists.

    Supports ``$patch: delete`` inside keyed list items and ``$patch: replace`` on dicts. Lists of
    scalars (``finalizers`` included) are replaced, not unioned as a real API server would.
    """
    if isinstance(patch, list) and field in STRATEGIC_MERGE_KEYS and isinstance(target, list):
        return _merge_keyed_list(target, patch, STRATEGIC_MERGE_KEYS[field])
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {key: copy.deepcopy(value) for key, value in patch.items() if key != "$patch"}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        else:
            result[key] = strategic_merge_patch(result.get(key), value, key)
    return result


def _merge_keyed_list(target: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    result = list(target)
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise PatchError(f"strategic merge patch: list item {item!r} lacks the merge key {merge_key!r}")
        positions = [
            i
            for i, old in enumerate(result)
            if isinstance(old, dict) and old.get(merge_key) == item[merge_key]
        ]
        if item.get("$patch") == "delete":
            result = [old for i, old in enumerate(result) if i not in positions]
        elif positions:
            result[positions[0]] = strategic_merge_patch(result[positions[0]], item)
        else:
            result.append(strategic_merge_patch({}, item))
    return result


def clone(value: Any) -> Any:
    """A deep copy of JSON data (several times faster than ``copy.deepcopy``)."""
    if type(value) is dict:
        return {k: clone(v) for k, v in value.items()}
    if type(value) is list:
        return [clone(v) for v in value]
    return value


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch; a failed ``test`` or a missing path raises :class:`PatchError`."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    try:
        return jsonpatch.apply_patch(clone(target), operations, in_place=True)  # faster than its deepcopy
    except jsonpatch.JsonPatchTestFailed as exc:
        raise PatchError(f"the JSON patch test operation failed: {exc}") from exc
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, KeyError, TypeError) as exc:
        raise PatchError(f"the JSON patch cannot apply: {exc}") from exc
