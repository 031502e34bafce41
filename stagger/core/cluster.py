"""The GPUs that placement may use, as the CLI reads them from a cluster file and the
operator builds them from Node objects and the node agent's inventory."""

from __future__ import annotations

from pydantic import Field, model_validator

from stagger.core.api import SharingMode, Wire


class Gpu(Wire):
    index: int = Field(ge=0, strict=True)
    uuid: str | None = None
    product: str = Field(min_length=1)
    memory_mib: int = Field(gt=0, alias="memoryMiB", strict=True)
    sharing_mode: SharingMode = SharingMode.TIME_SLICING


class Node(Wire):
    name: str = Field(min_length=1, max_length=253)
    labels: dict[str, str] = Field(default_factory=dict)
    gpus: list[Gpu] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_indexes(self) -> Node:
        seen: set[int] = set()
        for gpu in self.gpus:
            if gpu.index in seen:
                raise ValueError(f"node {self.name}: GPU index {gpu.index} appears twice")
            seen.add(gpu.index)
        return self


class Cluster(Wire):
    nodes: list[Node] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_nodes(self) -> Cluster:
        names = [n.name for n in self.nodes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"node names appear more than once: {', '.join(dupes)}")
        return self
