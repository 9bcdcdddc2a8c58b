"""``GET /metrics``: Prometheus text format (app/serving/metrics.py lists the metrics). No
API key needed; without one the series are summed over their ``model`` label, so no
model id is listed; with a valid key (any scope) they are per model. The job counts are
read from the store at scrape time, so every API process reports the same ones."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlalchemy import func, select

from app.db import session_scope
from app.deps import SettingsDep
from app.routers.predict import ServingRoute
from app.serving import metrics
from app.settings import Settings
from app.store import Job

router = APIRouter(tags=["health"], route_class=ServingRoute)


def count_jobs_by_status(settings: Settings) -> dict[str, int]:
    with session_scope(settings) as session:
        return dict(
            session.execute(select(Job.status, func.count()).group_by(Job.status)).tuples().all()
        )


@router.get(
    "/metrics",
    summary="Prometheus metrics (no API key)",
    responses={200: {"content": {"text/plain": {}}}},
)
def prometheus_metrics(request: Request, settings: SettingsDep) -> Response:
    per_model = getattr(request.state, "api_key", None) is not None  # set by app/gate.py
    return metrics.exposition(
        metrics.JobsByStatus(lambda: count_jobs_by_status(settings)), per_model=per_model
    )
