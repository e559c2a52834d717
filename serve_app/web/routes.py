"""Serves the playground page at `/` and `/playground`, and its assets (a stylesheet, ES modules).

The page uses only relative URLs, so it works wherever the app is mounted (Ray Serve route prefix,
a reverse proxy path) without configuration.
"""
from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter, FastAPI, HTTPException, Response
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)

_JS = "text/javascript; charset=utf-8"
ASSETS = {
    "playground.css": "text/css; charset=utf-8",
    # ES modules: playground.js imports the others by relative URL
    "playground.js": _JS,
    "api.js": _JS,
    "conversation.js": _JS,
    "live.js": _JS,
    "runs.js": _JS,
    "voices.js": _JS,
    "wav.js": _JS,
    "waveform.js": _JS,
}
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


@cache
def _read(name: str) -> str:
    return files("serve_app.web").joinpath(name).read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse)
@router.get("/playground", response_class=HTMLResponse)
def playground_page() -> HTMLResponse:
    return HTMLResponse(_read("index.html"), headers=_HEADERS)


@router.get("/playground/{name}")
def playground_asset(name: str) -> Response:
    if name not in ASSETS:
        raise HTTPException(status_code=404, detail=f"no playground asset named {name!r}")
    return Response(_read(name), media_type=ASSETS[name], headers=_HEADERS)


def install_playground(app: FastAPI) -> FastAPI:
    """Serve the page and its assets from `app` (`create_app` does)."""
    app.include_router(router)
    return app
