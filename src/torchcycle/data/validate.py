"""Validation rules run before anything trains. Each returns a JSON-able report; problems are collected
(not just the first) and raised together as one DataValidationError naming file, row/column or image."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torchcycle.errors import DataValidationError

MAX_LISTED = 10


@dataclass
class Report:
    kind: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"check": name, "passed": bool(ok), "detail": detail})
        return ok

    def fail(self, name: str, message: str) -> None:
        self.check(name, False, message)
        self.errors.append(message)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "failed" if self.errors else "passed",
            "kind": self.kind,
            "errors": self.errors,
            "checks": self.checks,
            "summary": self.summary,
        }

    def raise_if_failed(self) -> None:
        if self.errors:
            listed = "\n".join(f"  - {e}" for e in self.errors[:MAX_LISTED])
            more = f"\n  … and {len(self.errors) - MAX_LISTED} more" if len(self.errors) > MAX_LISTED else ""
            exc = DataValidationError(f"data validation failed ({len(self.errors)} problem(s)):\n{listed}{more}")
            exc.report = self.to_dict()  # type: ignore[attr-defined]
            raise exc


