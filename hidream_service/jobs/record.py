"""How a Job is written down: the columns queries filter and order on, and one JSON document for
the rest. Adding a field to `Job` (with a default) needs nothing here and no migration: it lands in
the document. pydantic converts both ways (enums, tuples, nested records)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter

from hidream_service.jobs.model import Job, LogLine, Preview

_JOB = TypeAdapter(Job)

#: Fields kept in columns of the same name: the store's statements read or change them.
COLUMN_FIELDS = frozenset(
    {
        "id",
        "seq",
        "endpoint",
        "owner",
        "dialect",
        "status",
        "created_at",
        "started_at",
        "completed_at",
        "attempts",
        "files_expired_at",
    }
)
#: Computed when read, never stored.
DERIVED_FIELDS = frozenset({"queue_position", "logs", "preview"})
#: Stored in columns under their own names: cancel_requested (0/1), progress (progress_step, progress_total).
SPECIAL_FIELDS = frozenset({"cancel_requested", "progress"})
DOCUMENT_FIELDS = frozenset(
    field.name for field in dataclasses.fields(Job) if field.name not in COLUMN_FIELDS | DERIVED_FIELDS | SPECIAL_FIELDS
)


def document(job: Job) -> str:
    """The job's document column."""
    return json.dumps(_JOB.dump_python(job, mode="json", include=set(DOCUMENT_FIELDS)), separators=(",", ":"))


def job_from_row(
    row: Mapping[Any, Any],
    *,
    queue_position: int | None = None,
    logs: list[LogLine] | None = None,
    preview: Preview | None = None,
) -> Job:
    values: dict[str, Any] = json.loads(row["doc"])
    values.update({name: row[name] for name in COLUMN_FIELDS})
    values["cancel_requested"] = bool(row["cancel_requested"])
    if row["progress_total"] is not None:
        values["progress"] = {"step": row["progress_step"], "total": row["progress_total"]}
    job = _JOB.validate_python(values)
    if queue_position is None and not logs and preview is None:
        return job
    return dataclasses.replace(job, queue_position=queue_position, logs=logs or [], preview=preview)
