"""Exact writes: the merge patch the operator sends makes the live object hold what it
wants, removes what it stopped wanting, and leaves what others set alone."""

from __future__ import annotations

import copy
import json
from typing import Any

from stagger_operator.kube import LAST_APPLIED, apply_patch, with_last_applied


def deployment(*, label: bool = True, selector: bool = True, limit: bool = True) -> dict[str, Any]:
    resources = {"limits": {"cpu": "2", **({"memory": "4Gi"} if limit else {})}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "cam-1-0",
            "namespace": "default",
            "labels": {"app": "cam", **({"team": "retail"} if label else {})},
        },
        "spec": {
            "replicas": 1,
            "template": {
                "spec": {
                    "nodeSelector": {"gpu": "h200", **({"zone": "a"} if selector else {})},
                    "containers": [{"name": "triton", "image": "t:1", "resources": resources}],
                }
            },
        },
    }


def live_after(write: dict[str, Any]) -> dict[str, Any]:
    """What the API server holds after a write: the object, plus fields of its own and a
    default inside a list item."""
    live = copy.deepcopy(write)
    live["metadata"] |= {"uid": "u-1", "resourceVersion": "7", "generation": 1}
    live["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] = "/dev/x"
    live["status"] = {"readyReplicas": 1}
    return live


def merge(live: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies a merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(live) if isinstance(live, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge(out.get(k), v)
    return out


def test_an_unchanged_object_is_not_written_despite_the_servers_own_fields() -> None:
    desired = with_last_applied(deployment())
    assert apply_patch(desired, live_after(desired)) is None


def test_what_the_operator_stopped_wanting_is_removed() -> None:
    live = live_after(with_last_applied(deployment()))
    desired = with_last_applied(deployment(label=False, selector=False, limit=False))
    patch = apply_patch(desired, live)
    assert patch is not None
    assert patch["metadata"]["labels"] == {"team": None}
    assert patch["spec"]["template"]["spec"]["nodeSelector"] == {"zone": None}
    after = merge(live, patch)
    assert after["metadata"]["labels"] == {"app": "cam"}
    assert after["spec"]["template"]["spec"]["nodeSelector"] == {"gpu": "h200"}
    (container,) = after["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == {"limits": {"cpu": "2"}}  # the list was sent whole
    assert apply_patch(desired, after) is None  # and then it holds


def test_fields_others_set_are_left_alone() -> None:
    live = live_after(with_last_applied(deployment()))
    live["metadata"]["annotations"]["owner"] = "platform-team"  # kubectl annotate
    live["metadata"]["labels"]["cost-center"] = "42"  # kubectl label
    desired = with_last_applied(deployment(label=False))
    patch = apply_patch(desired, live)
    assert patch is not None
    after = merge(live, patch)
    assert after["metadata"]["annotations"]["owner"] == "platform-team"
    assert after["metadata"]["labels"] == {"app": "cam", "cost-center": "42"}
    assert after["metadata"]["uid"] == "u-1" and after["status"] == {"readyReplicas": 1}


def test_an_object_written_before_the_annotation_loses_nothing_it_has() -> None:
    """No record of what was applied: nothing is removed, the record is added."""
    live = live_after(deployment())
    desired = with_last_applied(deployment(label=False))
    patch = apply_patch(desired, live)
    assert patch is not None and "labels" not in patch["metadata"]
    assert json.loads(patch["metadata"]["annotations"][LAST_APPLIED]) == deployment(label=False)
