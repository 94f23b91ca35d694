"""A FastAPI app with the seeds' security cases, for tests and ``benchmarks/http_overhead.py``.

It uses only :mod:`otel_secaudit.helpers` and plain HTTP errors: under
``opentelemetry-instrument`` the plugin's middleware adds everything else (status events,
request context, blocks). ``calls`` counts how often each endpoint ran, so tests can check
that a blocked request never reached the application (``GET /calls``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, HTTPException, Request, WebSocket

from otel_secaudit import helpers

VALID_TOKEN = "letmein-0123456789"
GOOD_PASSWORD = "correct horse battery staple"
HOME_TENANT = "t1"


def create_app() -> FastAPI:
    """A fresh app (tests build one per test; ``app`` below is the module-level one)."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    calls: Counter[str] = Counter()
    app.state.calls = calls

    @app.get("/ok")
    async def ok() -> dict[str, Any]:
        calls["ok"] += 1
        return {"ok": True}

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, Any]:
        calls["item"] += 1
        return {"id": item_id[:16]}

    @app.get("/private")
    async def private(request: Request) -> dict[str, Any]:
        calls["private"] += 1
        if request.headers.get("authorization") != f"Bearer {VALID_TOKEN}":
            raise HTTPException(401, "unauthenticated")
        return {"secret": "ok"}

    @app.get("/forbidden")
    async def forbidden() -> None:
        calls["forbidden"] += 1
        raise HTTPException(403, "forbidden")

    @app.get("/limited")
    async def limited() -> None:
        calls["limited"] += 1
        raise HTTPException(429, "slow down")

    @app.get("/tenants/{tenant_id}/invoices")
    async def invoices(tenant_id: str) -> dict[str, Any]:
        calls["invoices"] += 1
        if tenant_id != HOME_TENANT:
            helpers.cross_tenant("u1", HOME_TENANT, tenant_id, resource_type="invoice")
            raise HTTPException(403, "forbidden")
        return {"invoices": []}

    @app.post("/login")
    async def login(request: Request) -> dict[str, Any]:
        calls["login"] += 1
        body = await request.json()
        if body.get("password") == GOOD_PASSWORD:
            helpers.login_succeeded(str(body.get("username")))
            return {"ok": True}
        helpers.login_failed(str(body.get("username")))
        raise HTTPException(401, "bad credentials")

    @app.post("/auth/jwt/login")
    async def jwt_login(request: Request) -> dict[str, Any]:
        """fastapi-users style: bad credentials answer 400, and the app records nothing itself
        (OTEL_SECAUDIT_LOGIN_ROUTES makes the plugin see it)."""
        calls["jwt_login"] += 1
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        if form.get("password") == GOOD_PASSWORD:
            return {"access_token": "issued", "token_type": "bearer"}
        raise HTTPException(400, "LOGIN_BAD_CREDENTIALS")

    @app.get("/whoami")
    async def whoami(request: Request) -> dict[str, Any]:
        calls["whoami"] += 1
        user = request.headers.get("x-user")
        if user:
            request.state.user_id = user
        import otel_secaudit

        otel_secaudit.record("data.sensitive.accessed", resource_type="profile")
        return {"user": user}

    @app.get("/boom")
    async def boom() -> None:
        calls["boom"] += 1
        raise RuntimeError("boom")

    @app.get("/calls")
    async def get_calls() -> dict[str, int]:
        return dict(calls)

    @app.websocket("/ws")
    async def echo(websocket: WebSocket) -> None:
        """Echoes one text message (a blocked client's handshake never gets here)."""
        calls["ws"] += 1
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    return app


app = create_app()
