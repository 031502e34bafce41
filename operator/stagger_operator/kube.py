"""The only module of the operator that talks to the Kubernetes API (besides kopf's own
watching). One mechanism for every kind: a path table, create-or-merge-patch, delete."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from stagger.core.api import GpuNode, GpuSchedule, InferenceStream, ModelProfile
from stagger_operator.backoff import Backoff
from stagger_operator.leader import LeaseRecord
from stagger_operator.manifests import MANAGED_BY

MANAGED_SELECTOR = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    group_version: str  # "v1", "apps/v1", "stagger.dev/v1alpha1"
    plural: str
    namespaced: bool

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


log = logging.getLogger("stagger.operator")

KINDS: dict[str, Kind] = {
    "ConfigMap": Kind("v1", "configmaps", True),
    "Event": Kind("v1", "events", True),
    "Node": Kind("v1", "nodes", False),
    "Pod": Kind("v1", "pods", True),
    "Deployment": Kind("apps/v1", "deployments", True),
    "Job": Kind("batch/v1", "jobs", True),
    "ResourceClaim": Kind("resource.k8s.io/v1", "resourceclaims", True),
    "InferenceStream": Kind("stagger.dev/v1alpha1", "inferencestreams", True),
    "ModelProfile": Kind("stagger.dev/v1alpha1", "modelprofiles", False),
    "GpuSchedule": Kind("stagger.dev/v1alpha1", "gpuschedules", False),
    "GpuNode": Kind("stagger.dev/v1alpha1", "gpunodes", False),
    "Lease": Kind("coordination.k8s.io/v1", "leases", True),
}
# Kinds the operator creates for shards, cleaned up when no longer wanted.
OWNED_KINDS = ("Deployment", "ConfigMap", "ResourceClaim")


@dataclass(frozen=True)
class InvalidObject:
    namespace: str
    name: str
    problem: str


RETRIED = {429, 500, 502, 503, 504}
"""Answers a call is retried on: the API server is throttling (429: after its Retry-After)
or briefly unable to answer. Anything else is the caller's to handle (404, 409, 422)."""


class Kube:
    def __init__(
        self,
        api: client.ApiClient,
        timeout: tuple[float, float] = (5.0, 30.0),
        *,
        retries: int = 3,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api = api
        self.timeout = timeout  # (connect, read) seconds: never hang on a dead connection
        self.retries = retries
        self.backoff = backoff or Backoff(base_s=0.2, cap_s=5.0)
        self.sleep = sleep

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str | None = None,
        query: list[tuple[str, str]] | None = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        method, url, headers, body = self.api.param_serialize(
            method,
            path,
            query_params=query,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )[:4]
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self.api.call_api(
                    method, url, headers, body, _request_timeout=self.timeout
                )
            except urllib3.exceptions.HTTPError:  # a timeout, a refused or reset connection
                if last:
                    raise
                self.sleep(self.backoff.delay(attempt))
                continue
            raw = response.read()  # type: ignore[no-untyped-call]
            if 200 <= response.status < 300:
                return json.loads(raw) if raw else None
            if response.status not in RETRIED or last:
                raise ApiException(status=response.status, reason=response.reason, body=raw)
            self.sleep(_retry_after(response) or self.backoff.delay(attempt))
        raise AssertionError("unreachable")  # the last attempt returned or raised

    # -- reading ----------------------------------------------------------------

    def list_objects(
        self, kind: str, namespace: str | None = None, selector: str | None = None
    ) -> list[Obj]:
        query = [("labelSelector", selector)] if selector else None
        items: list[Obj] = (
            self._call("GET", KINDS[kind].path(namespace), query=query).get("items") or []
        )
        return items

    def list_streams(
        self, namespaces: Iterable[str] = ()
    ) -> tuple[list[InferenceStream], list[InvalidObject]]:
        """Streams, and the ones whose spec does not validate (with why)."""
        return parse_streams(self.list_stream_objects(namespaces))

    def list_stream_objects(self, namespaces: Iterable[str] = ()) -> list[Obj]:
        scopes: list[str | None] = [*namespaces] or [None]  # None: every namespace
        return [o for ns in scopes for o in self.list_objects("InferenceStream", ns)]

    def list_profiles(self) -> list[ModelProfile]:
        out = []
        for obj in self.list_objects("ModelProfile"):
            try:
                out.append(ModelProfile.model_validate(obj))
            except ValidationError:
                continue  # the CRD schema refuses these; an edited one is skipped, not fatal
        return out

    def list_gpu_nodes(self) -> list[GpuNode]:
        """The node agents' inventories; one that does not parse is skipped (logged)."""
        out = []
        for raw in self.list_objects("GpuNode"):
            try:
                out.append(GpuNode.model_validate(raw))
            except ValueError as e:
                log.warning("skipping GpuNode %s: %s", raw["metadata"].get("name"), e)
        return out

    def list_schedules(self) -> list[GpuSchedule]:
        return [GpuSchedule.model_validate(o) for o in self.list_objects("GpuSchedule")]

    def list_managed(self, kind: str) -> list[Obj]:
        # Filtered here as well as by selector: the label is what makes an object ours.
        items = self.list_objects(kind, selector=MANAGED_SELECTOR)
        return [
            o
            for o in items
            if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by")
            == MANAGED_BY["app.kubernetes.io/managed-by"]
        ]

    # -- writing ----------------------------------------------------------------

    def apply(self, obj: Obj, current: Obj | None) -> bool:
        """Make ``obj`` so, exactly: create it when ``current`` (from a list the caller
        made) is None, else send the merge patch :func:`apply_patch` computes (what changed,
        and null for what this operator set last time and no longer wants). True when
        something was written."""
        kind = KINDS[obj["kind"]]
        meta = obj["metadata"]
        desired = with_last_applied(obj)
        if current is None:
            try:
                self._call("POST", kind.path(meta.get("namespace")), desired)
                return True
            except ApiException as e:
                if e.status != 409:  # created meanwhile: patch it below
                    raise
        patch = apply_patch(desired, current or {})
        if patch is None:
            return False
        path = kind.path(meta.get("namespace"), meta["name"])
        self._call("PATCH", path, patch, "application/merge-patch+json")
        return True

    @staticmethod
    def as_written(obj: Obj) -> Obj:
        """What :meth:`apply` writes of ``obj`` (with its last-applied record): what a cache
        of live objects must hold for the next write to remove what is gone."""
        return with_last_applied(obj)

    @staticmethod
    def differs(obj: Obj, current: Obj | None) -> bool:
        """Whether :meth:`apply` would write (checked before a write is sent off)."""
        return current is None or apply_patch(with_last_applied(obj), current) is not None

    def delete(self, kind: str, namespace: str | None, name: str) -> None:
        # Background: a Job's pods go with it (the API's default for Jobs orphans them).
        options = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        try:
            self._call("DELETE", KINDS[kind].path(namespace, name), options)
        except ApiException as e:
            if e.status != 404:
                raise

    def create_event(self, event: Obj) -> None:
        """Post an Event; losing one is better than failing a reconcile over it."""
        try:
            self._call("POST", KINDS["Event"].path(event["metadata"]["namespace"]), event)
        except ApiException:
            return

    def read_lease(self, namespace: str, name: str) -> Obj | None:
        """The Lease by name (None: there is none)."""
        try:
            lease: Obj = self._call("GET", KINDS["Lease"].path(namespace, name))
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return lease

    def create_lease(self, namespace: str, name: str, spec: Obj) -> bool:
        """Create the Lease; False when another replica created it first."""
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        try:
            self._call("POST", KINDS["Lease"].path(namespace), body)
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        return True

    def swap_lease(self, namespace: str, name: str, seen: LeaseRecord, spec: Obj) -> bool:
        """Compare-and-swap: write ``spec`` only if the Lease still holds what was ``seen``
        (a JSON patch whose ``test`` operations the API server applies atomically); False
        when it changed meanwhile."""
        ops: list[Obj] = [
            {"op": "test", "path": "/spec/holderIdentity", "value": seen.holder},
            {"op": "test", "path": "/spec/renewTime", "value": seen.renew_time},
            *({"op": "add", "path": f"/spec/{k}", "value": v} for k, v in spec.items()),
        ]
        try:
            self._call(
                "PATCH",
                KINDS["Lease"].path(namespace, name),
                ops,
                "application/json-patch+json",
            )
        except ApiException as e:
            if e.status in (409, 422):  # a failed test: someone else wrote it
                return False
            raise
        return True

    def release_lease(self, namespace: str, name: str, identity: str) -> None:
        """Give the Lease up on a clean shutdown, so a successor need not wait it out."""
        ops = [
            {"op": "test", "path": "/spec/holderIdentity", "value": identity},
            {"op": "replace", "path": "/spec/holderIdentity", "value": None},
        ]
        try:
            self._call(
                "PATCH", KINDS["Lease"].path(namespace, name), ops, "application/json-patch+json"
            )
        except ApiException:
            return  # not ours any more: nothing to give up

    def patch_status(self, kind: str, namespace: str | None, name: str, status: Obj) -> None:
        path = KINDS[kind].path(namespace, name) + "/status"
        self._call("PATCH", path, {"status": status}, "application/merge-patch+json")


def parse_streams(raw: Iterable[Obj]) -> tuple[list[InferenceStream], list[InvalidObject]]:
    """Streams, and the ones whose spec does not validate (with why)."""
    good, bad = [], []
    for obj in raw:
        meta = obj.get("metadata", {})
        try:
            good.append(InferenceStream.model_validate(obj))
        except ValidationError as e:
            first = e.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            bad.append(
                InvalidObject(
                    meta.get("namespace", ""), meta.get("name", ""), f"{where}: {first['msg']}"
                )
            )
    return good, bad


def _retry_after(response: Any) -> float | None:
    """The server's Retry-After, in seconds (capped: a reconcile must not stall for long)."""
    value = (response.headers or {}).get("Retry-After") if hasattr(response, "headers") else None
    try:
        return min(float(value), 30.0) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare from the API server; back off instead


LAST_APPLIED = "stagger.dev/last-applied"
"""Annotation: the object as this operator last wrote it (as ``kubectl apply`` keeps
``last-applied-configuration``), so that a field it stops wanting can be removed while
fields others set (the API server's defaults, ``kubectl annotate``) are left alone."""

_MISSING = object()


def with_last_applied(obj: Obj) -> Obj:
    """``obj`` with its own copy in the :data:`LAST_APPLIED` annotation."""
    meta = obj["metadata"]
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != LAST_APPLIED}
    bare = {**obj, "metadata": {**meta, "annotations": annotations}}
    if not annotations:
        del bare["metadata"]["annotations"]
    record = json.dumps(bare, sort_keys=True, separators=(",", ":"))
    return {**obj, "metadata": {**meta, "annotations": {**annotations, LAST_APPLIED: record}}}


def apply_patch(desired: Obj, live: Obj) -> Obj | None:
    """The JSON merge patch (RFC 7386) that makes ``live`` hold ``desired``: a three-way
    merge against what was last applied (``live``'s :data:`LAST_APPLIED`). Maps are merged
    key by key; a key this operator set last time and no longer wants is set to null
    (removed); a list is sent whole when it differs from the live one or from the last one
    applied (a merge patch replaces lists). None when nothing needs writing."""
    raw = ((live.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    try:
        last = json.loads(raw) if raw else {}
    except ValueError:
        last = {}
    return _merge_diff(desired, live, last)


def _merge_diff(want: Obj, live: Any, last: Any) -> Obj | None:
    live = live if isinstance(live, dict) else {}
    last = last if isinstance(last, dict) else {}
    patch: Obj = {}
    for key, value in want.items():
        current = live.get(key, _MISSING)
        if isinstance(value, dict) and isinstance(current, dict):
            sub = _merge_diff(value, current, last.get(key))
            if sub is not None:
                patch[key] = sub
        elif (
            current is _MISSING
            or not _contains(current, value)
            or (key in last and last[key] != value)
        ):
            patch[key] = value
    for key in last:
        if key not in want and key in live:
            patch[key] = None
    return patch or None


def _contains(current: Any, wanted: Any) -> bool:
    """True when every field of ``wanted`` is in ``current`` with the same value (the API
    server adds defaults and metadata of its own, so equality would always fail)."""
    if isinstance(wanted, dict):
        return isinstance(current, dict) and all(
            k in current and _contains(current[k], v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(current, list)
            and len(current) == len(wanted)
            and all(_contains(c, w) for c, w in zip(current, wanted, strict=True))
        )
    return bool(current == wanted)
