"""Reading manifests and cluster files, kubectl style, with errors a person can act on.

Every error names the file, the object (kind namespace/name, or its document number) and
the field. All errors of all files are collected before giving up, so one run shows them all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from stagger.core.api import API_VERSION, KINDS, InferenceStream, ModelProfile, Resource
from stagger.core.cluster import Cluster

R = TypeVar("R", bound=Resource)


class InputError(Exception):
    """One or more problems with the input files; ``problems`` has one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Document:
    path: str
    number: int  # 1-based position in its file
    body: Any

    def describe(self) -> str:
        if isinstance(self.body, dict):
            kind = self.body.get("kind") or "object"
            meta = self.body.get("metadata")
            if isinstance(meta, dict) and isinstance(meta.get("name"), str):
                ns = meta.get("namespace")
                name = f"{ns}/{meta['name']}" if isinstance(ns, str) else meta["name"]
                return f"{kind} {name}"
            return f"{kind} (document {self.number})"
        return f"document {self.number}"


def _files(paths: Iterable[str | Path]) -> Iterator[Path]:
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(x for x in p.iterdir() if x.suffix in (".yaml", ".yml", ".json"))
        else:
            yield p


def read_documents(paths: Iterable[str | Path]) -> list[Document]:
    """Every YAML document of every file (folders: their *.yaml); ``kind: List`` unrolled."""
    docs: list[Document] = []
    problems: list[str] = []
    for path in _files(paths):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            problems.append(f"{path}: cannot read: {e.strerror or e}")
            continue
        try:
            bodies = [b for b in yaml.safe_load_all(text) if b is not None]
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e)
            problems.append(f"{path}: not valid YAML{where}: {problem}")
            continue
        n = 0
        for body in bodies:
            items = (
                body.get("items")
                if isinstance(body, dict) and body.get("kind") == "List"
                else [body]
            )
            for item in items or []:
                n += 1
                docs.append(Document(str(path), n, item))
    if problems:
        raise InputError(problems)
    return docs


def _field(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def describe_validation(e: ValidationError) -> list[str]:
    lines = []
    for err in e.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if p not in ("function-after",))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] == "literal_error" and loc and loc[-1] == "kind":
            msg = f"{msg} (got {err['input']!r})"
        field = _field(loc)
        # A cross-field rule reports its own field path at the start of the message.
        if ": " in msg and msg.split(": ", 1)[0].startswith(field + ".") if field else False:
            field, msg = msg.split(": ", 1)
        lines.append(f"{field}: {msg}" if field else msg)
    return lines


def parse(docs: Iterable[Document], model: type[R]) -> list[R]:
    """Validate documents as ``model``; duplicates and wrong kinds are errors."""
    out: list[R] = []
    problems: list[str] = []
    seen: dict[tuple[str | None, str], str] = {}
    for doc in docs:
        where = f"{doc.path}: {doc.describe()}"
        body = doc.body
        if not isinstance(body, dict):
            problems.append(f"{where}: expected a mapping, got {type(body).__name__}")
            continue
        kind, api = body.get("kind"), body.get("apiVersion")
        if kind != model.KIND:
            known = "" if kind in KINDS else " (not a Stagger kind)"
            problems.append(f"{where}: kind is {kind!r}{known}, expected {model.KIND}")
            continue
        if api != API_VERSION:
            problems.append(f"{where}: apiVersion is {api!r}, expected {API_VERSION}")
            continue
        try:
            obj = model.model_validate(body)
        except ValidationError as e:
            problems.extend(f"{where}: {line}" for line in describe_validation(e))
            continue
        key = (obj.namespace if model.NAMESPACED else None, obj.name)
        if key in seen:
            problems.append(f"{where}: defined more than once (first in {seen[key]})")
            continue
        seen[key] = doc.path
        out.append(obj)
    if problems:
        raise InputError(problems)
    return out


def _parse_plain(path: str | Path, model: type[BaseModel]) -> Any:
    docs = read_documents([path])
    if len(docs) != 1 or not isinstance(docs[0].body, dict):
        raise InputError([f"{path}: expected one YAML mapping, found {len(docs)} document(s)"])
    try:
        return model.model_validate(docs[0].body)
    except ValidationError as e:
        raise InputError([f"{path}: {line}" for line in describe_validation(e)]) from None


def load_streams(paths: Iterable[str | Path]) -> list[InferenceStream]:
    return parse(read_documents(paths), InferenceStream)


def load_profiles(paths: Iterable[str | Path]) -> list[ModelProfile]:
    return parse(read_documents(paths), ModelProfile)


def load_cluster(path: str | Path) -> Cluster:
    cluster: Cluster = _parse_plain(path, Cluster)
    return cluster


@dataclass(frozen=True)
class Inputs:
    streams: list[InferenceStream]
    profiles: list[ModelProfile]
    cluster: Cluster


def load_inputs(
    stream_paths: Iterable[str | Path],
    cluster_path: str | Path,
    profile_paths: Iterable[str | Path] = (),
) -> Inputs:
    """Streams, profiles and cluster; every problem in every file is reported at once."""
    problems: list[str] = []

    def attempt(load: Any) -> Any:
        try:
            return load()
        except InputError as e:
            problems.extend(e.problems)
            return None

    streams = attempt(lambda: load_streams(stream_paths))
    profiles = attempt(lambda: load_profiles(profile_paths))
    cluster = attempt(lambda: load_cluster(cluster_path))
    if problems:
        raise InputError(problems)
    return Inputs(streams, profiles, cluster)
