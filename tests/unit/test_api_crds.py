"""The API models, the CRDs generated from them, and the CEL rules in those CRDs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from stagger.core.api import RESOURCES, STREAM_RULES, InferenceStream, ModelProfile
from stagger.core.contract import SlotAssignment
from stagger.core.crdgen import all_crds, openapi_schema
from stagger.loader import read_documents

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "stagger" / "scenarios"


def to_jsonschema(node: Any) -> Any:
    """OpenAPI v3.0 (nullable) to draft-4 JSON Schema (type lists), for jsonschema."""
    if isinstance(node, dict):
        out = {k: to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
        if out.pop("nullable", False) and "type" in out:
            out["type"] = [out["type"], "null"]
        return out
    if isinstance(node, list):
        return [to_jsonschema(v) for v in node]
    return node


def validator(resource: type) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(to_jsonschema(openapi_schema(resource)))


def walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(node, dict):
        out.append((path, node))
        for k, v in node.get("properties", {}).items():
            out += walk(v, f"{path}.{k}")
        if isinstance(node.get("items"), dict):
            out += walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            out += walk(node["additionalProperties"], f"{path}.*")
    return out


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.KIND)
def test_generated_schemas_are_structural(resource: type) -> None:
    for path, node in walk(openapi_schema(resource)):
        for banned in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "const", "title"):
            assert banned not in node, f"{resource.KIND}{path}: {banned}"
        assert not isinstance(node.get("additionalProperties"), bool), path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path


def test_crds_have_names_scope_status_and_printer_columns() -> None:
    crds = {c["spec"]["names"]["kind"]: c for c in all_crds().values()}
    stream_crd = crds["InferenceStream"]
    assert stream_crd["spec"]["scope"] == "Namespaced"
    assert crds["GpuSchedule"]["spec"]["scope"] == "Cluster"
    assert crds["ModelProfile"]["spec"]["names"]["shortNames"] == ["mprof"]
    assert crds["GpuSchedule"]["spec"]["names"]["shortNames"] == ["gsched"]
    version = stream_crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:7] == ["Model", "FPS", "Shards", "Node", "GPU", "Offset", "Phase"]
    gpu_columns = [
        c["name"] for c in crds["GpuSchedule"]["spec"]["versions"][0]["additionalPrinterColumns"]
    ]
    assert gpu_columns[:4] == ["Node", "GPU", "Streams", "Util"]
    template = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["template"]
    assert template["x-kubernetes-preserve-unknown-fields"] is True


def test_committed_crds_match_the_models() -> None:
    for name, body in all_crds().items():
        committed = yaml.safe_load((ROOT / "crds" / name).read_text())
        assert committed == body, f"crds/{name} is stale: run `make crds`"


def test_the_staleness_check_fails_on_an_edited_crd(tmp_path: Path) -> None:
    from stagger.cli import main

    assert main(["crds", "--out", str(tmp_path)]) == 0
    assert main(["crds", "--out", str(tmp_path), "--check"]) == 0
    target = tmp_path / "stagger.dev_inferencestreams.yaml"
    target.write_text(target.read_text().replace("istream", "is"))
    assert main(["crds", "--out", str(tmp_path), "--check"]) == 1


def test_scenario_manifests_validate_against_the_crd_schemas() -> None:
    validators = {r.KIND: validator(r) for r in RESOURCES}
    docs = read_documents([SCENARIOS / "default-streams.yaml", SCENARIOS / "default-profiles.yaml"])
    assert len(docs) > 20
    for doc in docs:
        validators[doc.body["kind"]].validate(doc.body)


GOOD = {
    "apiVersion": "stagger.dev/v1alpha1",
    "kind": "InferenceStream",
    "metadata": {"name": "cam", "namespace": "default"},
    "spec": {"model": "det", "fps": 10, "bodyTimeMs": 10.5, "latencyMs": 18.5, "memoryMiB": 100},
}

SCHEMA_REFUSES = {
    "negative fps": ("fps", -1),
    "zero fps": ("fps", 0),
    "string fps": ("fps", "ten"),
    "zero body": ("bodyTimeMs", 0),
    "negative memory": ("memoryMiB", -5),
    "fractional memory": ("memoryMiB", 1.5),
    "empty model": ("model", ""),
    "bad version": ("modelVersion", "v1"),
    "relative calibration input": ("calibrationInputs", {"IMAGE": "models/frame.jpg"}),
    "calibration input not a path": ("calibrationInputs", {"IMAGE": 7}),
    "too many calibration inputs": ("calibrationInputs", {f"IN{i}": "/f" for i in range(17)}),
}


@pytest.mark.parametrize("case", SCHEMA_REFUSES, ids=str)
def test_schema_and_model_both_refuse_bad_fields(case: str) -> None:
    field, value = SCHEMA_REFUSES[case]
    bad = copy.deepcopy(GOOD)
    bad["spec"][field] = value
    assert list(validator(InferenceStream).iter_errors(bad)), case
    with pytest.raises(ValidationError):
        InferenceStream.model_validate(bad)


def test_missing_model_is_refused_by_both() -> None:
    bad = copy.deepcopy(GOOD)
    del bad["spec"]["model"]
    assert list(validator(InferenceStream).iter_errors(bad))
    with pytest.raises(ValidationError, match="model"):
        InferenceStream.model_validate(bad)


def test_unknown_fields_are_refused_by_the_model() -> None:
    # The API server refuses them through strict field validation, not the schema.
    bad = copy.deepcopy(GOOD)
    bad["spec"]["fpss"] = 3
    with pytest.raises(ValidationError, match="Extra inputs"):
        InferenceStream.model_validate(bad)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "10", True])
def test_model_refuses_nan_infinite_and_non_numbers(value: object) -> None:
    bad = copy.deepcopy(GOOD)
    bad["spec"]["fps"] = value
    with pytest.raises(ValidationError):
        InferenceStream.model_validate(bad)


# ------------------------------------------------------------------ CEL

_ENV = celpy.Environment()


def cel_holds(rule: str, spec: dict[str, Any]) -> bool:
    """Evaluate a rule as the API server would: values typed by the schema (number ->
    double), fields that are absent stay absent."""
    props = openapi_schema(InferenceStream)["properties"]["spec"]["properties"]
    typed = {k: float(v) if props[k]["type"] == "number" else v for k, v in spec.items()}
    program = _ENV.program(_ENV.compile(rule))
    return bool(program.evaluate({"self": celpy.json_to_cel(typed)}))


timing = st.one_of(st.none(), st.floats(min_value=0.5, max_value=200).map(lambda x: round(x, 1)))


@settings(max_examples=200, deadline=None)
@given(body=timing, latency=timing, deadline=timing)
def test_cel_rules_and_pydantic_agree(
    body: float | None, latency: float | None, deadline: float | None
) -> None:
    spec: dict[str, Any] = {"model": "det", "fps": 10}
    for key, value in (("bodyTimeMs", body), ("latencyMs", latency), ("deadlineMs", deadline)):
        if value is not None:
            spec[key] = value
    cel_ok = all(cel_holds(r.cel, spec) for r in STREAM_RULES)
    try:
        InferenceStream.model_validate({**GOOD, "spec": spec})
        model_ok = True
    except ValidationError:
        model_ok = False
    assert cel_ok == model_ok


def test_cel_rules_are_the_ones_in_the_crd() -> None:
    spec_schema = openapi_schema(InferenceStream)["properties"]["spec"]
    assert [v["rule"] for v in spec_schema["x-kubernetes-validations"]] == [
        r.cel for r in STREAM_RULES
    ]
    profile_schema = openapi_schema(ModelProfile)["properties"]["spec"]
    assert (
        profile_schema["x-kubernetes-validations"][0]["rule"] == "self.bodyTimeMs <= self.latencyMs"
    )


def test_rule_message_names_the_field() -> None:
    with pytest.raises(ValidationError, match=r"spec.latencyMs: latencyMs exceeds deadlineMs"):
        InferenceStream.model_validate({**GOOD, "spec": {**GOOD["spec"], "deadlineMs": 10}})


def test_slot_contract_round_trips_and_computes_slot_times() -> None:
    contract = SlotAssignment.model_validate(
        {
            "stream": "cam",
            "namespace": "default",
            "shard": 0,
            "shards": 1,
            "node": "n",
            "gpuIndex": 0,
            "epoch": "2026-01-01T00:00:00Z",
            "periodTicks": 3000,
            "offsetTicks": 750,
            "bodyTicks": 315,
            "generation": 2,
            "effectiveAt": "2026-01-01T00:00:05Z",
        }
    )
    assert SlotAssignment.model_validate(contract.to_wire()) == contract
    assert contract.tick_hz == 30_000
