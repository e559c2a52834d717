"""`instrument_app`: the request-id and metrics middleware and `GET /metrics` on an app."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from serve_app.observability.middleware import MetricsMiddleware, RequestIdMiddleware

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    """Prometheus text exposition of this process's metrics."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def instrument_app(app: FastAPI, request_id_header: bool = True) -> FastAPI:
    """Add the middleware (outermost, request ids outside metrics) and `GET /metrics`, once, before
    the app starts (`create_app` does). `request_id_header=False`: the HTTP server in front answers
    with `X-Request-ID` itself (`RequestIdMiddleware`)."""
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(RequestIdMiddleware, set_header=request_id_header)
    app.include_router(router)
    return app
