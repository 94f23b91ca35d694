"""A Starlette app whose lifespan handling fails (as apps without lifespan support do): the
security middleware must pass lifespan through and leave uvicorn's fallback alone."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def denied(request: Any) -> PlainTextResponse:
    return PlainTextResponse("no", status_code=403)


_starlette = Starlette(routes=[Route("/denied", denied)])


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        raise RuntimeError("this app does not support lifespan")
    await _starlette(scope, receive, send)
