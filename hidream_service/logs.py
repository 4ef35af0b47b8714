"""Log lines as text or JSON (`HIDREAM_LOG_FORMAT`), and the job a line concerns.

In JSON each line is one object: `time`, `level`, `logger`, `message`, the process (`worker` in a
worker), `exception` when there is one, and, for every line logged while a job is handled, its
`request_id`, `endpoint` and `dialect`. The job is held in a context variable: the API binds it in
the request handler's task (so uvicorn's access line of that request carries it too) and a worker
around each run, so no call in between has to pass it along.

The standard library's logging with a small formatter: a log processor would be one more dependency
in every worker process for the one thing `json.dumps` does here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.config
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


@dataclass(frozen=True)
class JobFields:
    """What every line about one job carries."""

    request_id: str
    endpoint: str
    dialect: str


_current_job: ContextVar[JobFields | None] = ContextVar("hidream_log_job", default=None)


def bind_job(request_id: str, endpoint: str, dialect: str) -> None:
    """Lines logged from here on in this context (an asyncio task, a thread's run) concern this job."""
    _current_job.set(JobFields(request_id, endpoint, dialect))


@contextlib.contextmanager
def job_logging(request_id: str, endpoint: str, dialect: str) -> Iterator[None]:
    """Lines logged inside the block concern this job."""
    token = _current_job.set(JobFields(request_id, endpoint, dialect))
    try:
        yield
    finally:
        _current_job.reset(token)


def current_job() -> JobFields | None:
    return _current_job.get()


class TextFormatter(logging.Formatter):
    """Today's text lines, with the job's request id, endpoint and dialect after a line about one."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        job = _current_job.get()
        if job is None:
            return line
        return f"{line} [request_id={job.request_id} endpoint={job.endpoint} dialect={job.dialect}]"


class JsonFormatter(logging.Formatter):
    """One JSON object per line. `fields` are added to every line (the worker's name)."""

    def __init__(self, fields: dict[str, str] | None = None) -> None:
        super().__init__()
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self.fields,
        }
        job = _current_job.get()
        if job is not None:
            line.update(asdict(job))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


def logging_config(log_format: LogFormat, *, worker: str | None = None) -> dict[str, Any]:
    """A `logging.config.dictConfig` for a process of the server: the root logger on stderr at INFO,
    uvicorn's loggers (the access log included) passing their lines to it."""
    if log_format == "json":
        formatter: dict[str, Any] = {"()": JsonFormatter, "fields": {"worker": worker} if worker else {}}
    else:
        text = TEXT_FORMAT if worker is None else f"%(asctime)s worker {worker} %(levelname)s %(message)s"
        formatter = {"()": TextFormatter, "fmt": text}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"hidream": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "hidream", "stream": sys.stderr}},
        "root": {"handlers": ["stderr"], "level": "INFO"},
        "loggers": {
            name: {"handlers": [], "propagate": True, "level": "INFO"}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def configure_logging(log_format: LogFormat, *, worker: str | None = None) -> None:
    """Set up this process's logging (the server's, or a worker's named `worker`)."""
    logging.config.dictConfig(logging_config(log_format, worker=worker))
