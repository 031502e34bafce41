"""The slot contract files the operator mounts (a ConfigMap), read again whenever their
bytes change. A file that cannot be read or parsed is reported once per change and the
last good contract stays in force.

The kubelet updates a mounted ConfigMap by swapping a symlink, so files are compared by
content, not by inode or mtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from stagger.core.contract import SlotAssignment


@dataclass(frozen=True)
class Problem:
    file: Path
    message: str


@dataclass
class SlotFiles:
    """``path`` is one contract file, or a directory whose ``*.json`` files are contracts."""

    path: Path
    seen: dict[Path, bytes | None] = field(default_factory=dict)

    def files(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(p for p in self.path.glob("*.json") if not p.name.startswith("."))
        return [self.path]

    def poll(self) -> tuple[list[SlotAssignment], list[Problem]]:
        """Contracts whose file changed since the last poll, and the problems found."""
        contracts: list[SlotAssignment] = []
        problems: list[Problem] = []
        for file in self.files():
            try:
                data: bytes | None = file.read_bytes()
            except FileNotFoundError:
                data = None
            except OSError as e:
                if self.seen.get(file, b"") is not None:  # report a change once
                    problems.append(Problem(file, f"cannot read the slot file: {e}"))
                self.seen[file] = None
                continue
            if file in self.seen and self.seen[file] == data:
                continue
            self.seen[file] = data
            if data is None:
                problems.append(Problem(file, "no slot file (yet): requests are refused"))
                continue
            try:
                contracts.append(SlotAssignment.model_validate_json(data))
            except ValidationError as e:
                first = e.errors(include_url=False)[0]
                where = ".".join(str(x) for x in first["loc"]) or "the file"
                problems.append(
                    Problem(
                        file,
                        f"not a valid slot contract ({e.error_count()} errors; {where}: "
                        f"{first['msg']}): the last good contract stays in force",
                    )
                )
        return contracts, problems
