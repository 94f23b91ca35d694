"""A FastAPI JSON API that authenticates the way most do, written for the observed
authentication tests (tests/test_observed_auth_e2e.py) and benchmarks/observed_auth.py:

* ``POST /token``: an OAuth2 password form (``OAuth2PasswordRequestForm``), passwords hashed
  with pwdlib (argon2); an unknown user is checked against a dummy hash so the answer takes as
  long; a wrong password answers 401 ``Incorrect username or password``;
* ``GET /users/me``: a token-only route: a PyJWT HS256 bearer token, 401 ``Could not validate
  credentials`` when it does not decode;
* ``GET /admin/stats``: a mixed route that answers 403 both for a token that does not decode
  ("Could not validate credentials", as FastAPI's full-stack template does) and for a valid
  token of a user without the admin role;
* ``POST /password-recovery`` and ``POST /reset-password``: an itsdangerous timed reset token
  (the recovery answer carries it, where a real app would mail it);
* ``POST /me/password``: change password, the current password checked again.

No line of this app knows about otel_secaudit. Users live in memory; ``RESET_MAX_AGE``
(seconds, env) lets the tests see a token expire.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any

import jwt
from fastapi import Depends, FastAPI, Form, HTTPException, status
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm
from itsdangerous import BadSignature, URLSafeTimedSerializer
from pwdlib import PasswordHash

SECRET_KEY = os.environ.get("APP_SECRET_KEY", "observed-auth-app-signing-key-0123456789")
ALGORITHM = "HS256"
RESET_MAX_AGE = int(os.environ.get("RESET_MAX_AGE", "3600"))

password_hash = PasswordHash.recommended()
DUMMY_HASH = password_hash.hash("a password nobody has")
USERS: dict[str, dict[str, Any]] = {
    "alice": {"id": "u-1001", "hash": password_hash.hash("alice-in-wonderland-42"), "admin": False},
    "root": {"id": "u-1", "hash": password_hash.hash("root-of-all-evil-7"), "admin": True},
    "bob": {"id": "u-1002", "hash": password_hash.hash("bob-builds-bridges-8"), "admin": False},
}
BY_ID = {user["id"]: name for name, user in USERS.items()}
resets = URLSafeTimedSerializer(SECRET_KEY, salt="password-reset")
oauth2 = OAuth2PasswordBearer(tokenUrl="token")
app = FastAPI(title="observed-auth test app")

CREDENTIALS = "Could not validate credentials"


def issue_token(user_id: str, seconds: int = 900) -> str:
    claims = {"sub": user_id, "exp": int(time.time()) + seconds}
    return jwt.encode(claims, SECRET_KEY, algorithm=ALGORITHM)


@app.post("/token")
def login(form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> dict[str, str]:
    user = USERS.get(form.username)
    if user is None:
        password_hash.verify(form.password, DUMMY_HASH)  # same time for unknown users
        ok = False
    else:
        ok = password_hash.verify(form.password, user["hash"])
    if not ok:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "Incorrect username or password",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return {"access_token": issue_token(user["id"]), "token_type": "bearer"}


def _subject(token: str, refusal: int) -> str:
    try:
        claims = jwt.decode(token, SECRET_KEY, algorithms=[ALGORITHM])
    except jwt.InvalidTokenError:
        raise HTTPException(refusal, CREDENTIALS, headers={"WWW-Authenticate": "Bearer"}) from None
    subject = claims.get("sub")
    if subject not in BY_ID:
        raise HTTPException(refusal, CREDENTIALS)
    return str(subject)


def current_user(token: Annotated[str, Depends(oauth2)]) -> str:
    return _subject(token, status.HTTP_401_UNAUTHORIZED)


def current_user_403(token: Annotated[str, Depends(oauth2)]) -> str:
    return _subject(token, status.HTTP_403_FORBIDDEN)


@app.get("/users/me")
def me(user_id: Annotated[str, Depends(current_user)]) -> dict[str, str]:
    return {"id": user_id, "username": BY_ID[user_id]}


@app.get("/admin/stats")
def admin_stats(user_id: Annotated[str, Depends(current_user_403)]) -> dict[str, int]:
    if not USERS[BY_ID[user_id]]["admin"]:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "The user doesn't have enough privileges")
    return {"users": len(USERS)}


@app.post("/password-recovery")
def recover(username: Annotated[str, Form()]) -> dict[str, str]:
    user = USERS.get(username)
    token = resets.dumps({"sub": user["id"]}) if user else ""
    return {"message": "If the account exists, a reset link was sent", "token": token}


@app.post("/reset-password")
def reset(token: Annotated[str, Form()], new_password: Annotated[str, Form()]) -> dict[str, str]:
    try:
        claims = resets.loads(token, max_age=RESET_MAX_AGE)
    except BadSignature:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "Invalid token") from None
    USERS[BY_ID[claims["sub"]]]["hash"] = password_hash.hash(new_password)
    return {"message": "Password updated"}


@app.post("/me/password")
def change_password(
    user_id: Annotated[str, Depends(current_user)],
    current_password: Annotated[str, Form()],
    new_password: Annotated[str, Form()],
) -> dict[str, str]:
    user = USERS[BY_ID[user_id]]
    if not password_hash.verify(current_password, user["hash"]):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "Incorrect password")
    user["hash"] = password_hash.hash(new_password)
    return {"message": "Password updated"}
