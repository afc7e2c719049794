"""ingest@<task>: read the source named in params, validate it, and write data/raw/<task>/ atomically
(what is written depends on the kind of data: torchcycle.kinds). The validation report goes to
reports/<task>/validation.json; a failed validation writes validation-failed.json and keeps the last
good data."""

from __future__ import annotations

from pathlib import Path

from torchcycle.atomic import write_json
from torchcycle.config import Params
from torchcycle.errors import DataValidationError
from torchcycle.kinds import kind_of
from torchcycle.paths import TaskPaths


def run(params: Params, task: str, root: Path) -> dict:
    cfg = params.task(task)
    paths = TaskPaths(task, root)
    failed = paths.validation_failed
    try:
        report = kind_of(cfg).ingest(cfg, paths, root, params.seed)
    except DataValidationError as exc:
        detail = getattr(exc, "report", {"status": "failed", "errors": [str(exc)]})
        write_json(failed, detail)
        raise DataValidationError(
            f"{exc}\nNothing was overwritten: data/raw/{task}/ still holds the last good data. "
            f"Full report: {failed}"
        ) from None
    failed.unlink(missing_ok=True)
    write_json(paths.validation_report, report)
    return report
