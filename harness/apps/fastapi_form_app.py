"""A FastAPI login in the OAuth2 password style, for the user-name tests: ``POST /token``
takes ``username`` and ``password`` as form fields (``Form()``: url-encoded or multipart; the
last of duplicate fields, as Starlette parses forms) and answers 401 or 200; ``POST
/api/login`` takes a JSON body ``{"email": ..., "password": ...}`` (``json.loads``: the last of
duplicate keys) and answers 401 or 200. Nothing in it mentions otel_secaudit."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Body, FastAPI, Form, HTTPException

USERS = {"alice": "correct horse battery staple", "bob": "tr0ub4dor&3-bob-password"}
_BY_EMAIL = {f"{name}@example.com": name for name in USERS}

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


def _check(name: str, password: str) -> None:
    expected = USERS.get(name, "")
    if not (hmac.compare_digest(expected.encode(), password.encode()) and name in USERS):
        raise HTTPException(401, "Incorrect username or password")


@app.post("/token")
async def token(
    username: Annotated[str, Form()], password: Annotated[str, Form()]
) -> dict[str, Any]:
    _check(username, password)
    return {"token_type": "bearer", "user": username}


@app.post("/api/login")
async def api_login(
    email: Annotated[str, Body()], password: Annotated[str, Body()]
) -> dict[str, Any]:
    _check(_BY_EMAIL.get(email, ""), password)
    return {"ok": True}
