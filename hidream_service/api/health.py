"""Liveness and readiness: `/health/live`, `/health/ready`, and `/health` as existing clients know it.

Readiness asks what a job needs here: a store that takes writes, an outputs directory that takes
files, a live worker (none on Modal, whose executor starts containers per job) and the served
models' weights in place (their cheap file checks; none on Modal's web containers, which hold no
weights). Each check runs off the event loop; a failing one is named with why in the answer.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from hidream_service.api.state import AppState, app_state
from hidream_service.db.engine import Database
from hidream_service.inference.weights import resolve_weights
from hidream_service.jobs.store import SqlJobStore
from hidream_service.storage import LocalOutputStorage
from hidream_service.storage_full import is_storage_full

#: The store probe's row is larger than a page, so a database with no room left refuses it, as it
#: would refuse a job's input; it is rolled back, so nothing of it stays.
PROBE_BYTES = 8192
OK = "ok"


class _RolledBack(Exception):
    """Ends the store probe's transaction without committing it."""


def store_problem(db: Database) -> str | None:
    """Whether the store takes a write: a row into `chores`, rolled back. Safe on both engines:
    the row's name is unique, and nothing is committed (a read-only Postgres refuses it too)."""
    try:
        with db.write() as tx:
            tx.run(
                "INSERT INTO chores (name, holder, until) VALUES (:name, :holder, 0)",
                {"name": f"health probe {uuid.uuid4().hex}", "holder": "x" * PROBE_BYTES},
            )
            raise _RolledBack
    except _RolledBack:
        return None
    except Exception as exc:
        if is_storage_full(exc):
            return f"the job store cannot be written ({exc})"
        return f"the job store failed ({exc!r})"


def outputs_problem(root: Path) -> str | None:
    """Whether the outputs directory takes a file: one byte, written, synced and removed."""
    probe = root / f".health-{uuid.uuid4().hex}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(descriptor, b"x")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
            probe.unlink()
    except OSError as exc:
        return f"the outputs directory cannot be written ({exc})"
    return None


def models_problem(state: AppState) -> str | None:
    """Whether the served models' weights are in place in the weights directory (the families' file
    checks; tiny weights are built by the worker on first use)."""
    models = sorted({endpoint.model for endpoint in state.endpoints.values() if endpoint.model is not None})
    try:
        layout = resolve_weights(state.settings.weights, state.settings.data_dir)
        if layout is None or layout.tiny:
            return None
        for model in models:
            state.registry.check_weights(layout, model)
    except Exception as exc:  # WeightsError, or a file that cannot be read
        return str(exc)
    return None


class Readiness:
    """The readiness checks of one app. `local`: jobs run here (the embedded runtime), so the served
    models' weights must be here too."""

    def __init__(self, *, local: bool) -> None:
        self.local = local

    async def problems(self, state: AppState) -> dict[str, str | None]:
        """Check name -> None when it passes, else why it fails. The executor's own problem (no
        worker alive, the pool's store calls failing) is the `workers` check."""
        checks: dict[str, Awaitable[str | None]] = {}
        store = state.service.store
        if isinstance(store, SqlJobStore):
            checks["store"] = state.store_call(store_problem, store.db)
        if isinstance(state.storage, LocalOutputStorage):
            checks["outputs"] = asyncio.to_thread(outputs_problem, state.storage.root)
        if self.local and state.settings.weights is not None:
            # Without a weights directory there is nothing to check: models named in HIDREAM_MODELS
            # are then served for their submissions alone (their runs fail).
            checks["models"] = asyncio.to_thread(models_problem, state)
        results = dict(zip(checks, await asyncio.gather(*checks.values()), strict=True))
        return {"workers": state.executor.health().get("problem"), **results}


def router(readiness: Readiness) -> APIRouter:
    routes = APIRouter(tags=["health"])

    @routes.get("/health/live")
    async def live() -> dict[str, str]:
        """200 while the process answers."""
        return {"status": "live"}

    @routes.get("/health/ready", responses={503: {"description": "Not ready: `failing` names the checks"}})
    async def ready(request: Request) -> JSONResponse:
        """200 when the store and the outputs take writes, a worker is alive and the served models'
        weights are in place; else 503, `failing` naming the checks and `checks` saying why."""
        problems = await readiness.problems(app_state(request))
        failing = [name for name, problem in problems.items() if problem is not None]
        body = {
            "status": "not ready" if failing else "ready",
            "checks": {name: problem or OK for name, problem in problems.items()},
            "failing": failing,
        }
        return JSONResponse(body, status_code=503 if failing else 200)

    @routes.get("/health", responses={503: {"description": "Degraded: jobs cannot run here now; `reason` says why"}})
    async def health(request: Request) -> JSONResponse:
        """200 `{"status": "ok", ...}`, or 503 `{"status": "degraded", "reason": ...}` while a
        readiness check fails (no worker alive, the job store or the outputs refusing writes, the
        served models' weights missing)."""
        state = app_state(request)
        problems = await readiness.problems(state)
        executor = dict(state.executor.health())
        executor.pop("problem", None)
        workers = problems.pop("workers")  # first: its sentence is what /health said before the other checks
        reasons = ([workers] if workers else []) + [f"{name}: {why}" for name, why in problems.items() if why]
        reason = "; ".join(reasons)
        body: dict[str, Any] = {"status": "degraded" if reason else "ok"}
        if reason:
            body["reason"] = reason
        body.update(executor, endpoints=sorted(state.endpoints))
        return JSONResponse(body, status_code=503 if reason else 200)

    return routes
