"""CustomResourceDefinitions generated from the API models.

pydantic emits JSON Schema 2020-12; the API server wants a *structural* OpenAPI v3.0
schema. The conversion: inline every ``$ref``; ``anyOf [X, null]`` becomes X with
``nullable: true``; numeric ``exclusiveMinimum/Maximum`` become ``minimum/maximum`` with
the boolean flag; titles, ``additionalProperties: false`` (strict field validation already
refuses unknown fields) and empty defaults go; a free-form object becomes
``x-kubernetes-preserve-unknown-fields``. Cross-field rules become ``x-kubernetes-validations``.
"""

from __future__ import annotations

from typing import Any

from stagger.core.api import GROUP, RESOURCES, VERSION, Resource

JsonSchema = dict[str, Any]

_DROP_KEYS = {"title", "$defs"}


class SchemaError(ValueError):
    """The model uses a construct with no structural-schema equivalent."""


def _resolve(node: Any, defs: dict[str, JsonSchema]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            merged = {
                **_resolve(defs[name], defs),
                **{k: v for k, v in node.items() if k != "$ref"},
            }
            return _resolve(merged, defs)
        return {k: _resolve(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, defs) for v in node]
    return node


def _structural(node: JsonSchema, path: str) -> JsonSchema:
    node = dict(node)
    for key in ("anyOf", "oneOf"):
        if key in node:
            options = [o for o in node.pop(key) if o.get("type") != "null"]
            if len(options) != 1:
                raise SchemaError(f"{path}: {key} with {len(options)} non-null options")
            node = {**options[0], **node, "nullable": True}
    for key in _DROP_KEYS:
        node.pop(key, None)
    if "allOf" in node:
        raise SchemaError(f"{path}: allOf is not structural")
    if node.get("default") in (None, "", [], {}):
        node.pop("default", None)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), int | float) and not isinstance(node.get(bound), bool):
            node[flag] = node.pop(bound)
            node[bound] = True
    extra = node.get("additionalProperties")
    if extra is False or extra is True:
        node.pop("additionalProperties")
        if extra is True and "properties" not in node:
            node["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("x-kubernetes-preserve-unknown-fields"):
        node.pop("additionalProperties", None)
    if "properties" in node:
        node["properties"] = {
            k: _structural(v, f"{path}.{k}") for k, v in node["properties"].items()
        }
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _structural(node["additionalProperties"], f"{path}.*")
    if isinstance(node.get("items"), dict):
        node["items"] = _structural(node["items"], f"{path}[]")
    if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        raise SchemaError(f"{path}: no type")
    return node


def openapi_schema(resource: type[Resource]) -> JsonSchema:
    """The structural ``openAPIV3Schema`` of one kind."""
    raw = resource.model_json_schema(by_alias=True, mode="validation")
    resolved = _resolve(raw, raw.get("$defs", {}))
    schema = _structural(resolved, resource.KIND)
    props = schema["properties"]
    # The API server owns these: it validates metadata itself and refuses any schema
    # for it beyond name/generateName.
    props["apiVersion"] = {"type": "string", "description": "stagger.dev/v1alpha1"}
    props["kind"] = {"type": "string", "description": resource.KIND}
    props["metadata"] = {"type": "object"}
    props["status"].pop("nullable", None)  # the status subresource is never null
    schema["required"] = [
        r for r in schema.get("required", []) if r not in ("apiVersion", "kind", "metadata")
    ]
    if resource.RULES:
        props["spec"]["x-kubernetes-validations"] = [
            {"rule": r.cel, "message": r.message, "fieldPath": "." + r.field_path.split(".", 1)[1]}
            for r in resource.RULES
        ]
    return schema


def crd(resource: type[Resource]) -> JsonSchema:
    """The CustomResourceDefinition of one kind, as a Kubernetes object."""
    singular = resource.KIND.lower()
    version: JsonSchema = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": openapi_schema(resource)},
        "subresources": {"status": {}},
    }
    if resource.PRINTER_COLUMNS:
        version["additionalPrinterColumns"] = [dict(c) for c in resource.PRINTER_COLUMNS]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{resource.PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "stagger"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": resource.KIND,
                "listKind": f"{resource.KIND}List",
                "plural": resource.PLURAL,
                "singular": singular,
                "shortNames": list(resource.SHORT_NAMES),
                "categories": ["stagger"],
            },
            "scope": "Namespaced" if resource.NAMESPACED else "Cluster",
            "versions": [version],
        },
    }


def all_crds() -> dict[str, JsonSchema]:
    """File name -> CRD, for every kind."""
    return {f"{GROUP}_{r.PLURAL}.yaml": crd(r) for r in RESOURCES}
