"""The bundled demo application: a small multi-tenant FastAPI backend with real security checks.

* ``POST /auth/login``: password (PBKDF2) and TOTP (pyotp), answers a JWT access token (HS256,
  ``sub``, ``tid``, ``roles``, ``jti``, ``exp``);
* ``POST /auth/logout``: revokes the token's ``jti``;
* bearer-token authentication on everything else: expired, invalid and revoked tokens are
  refused with 401;
* RBAC: roles grant permissions (``documents:read``, ``users:create``...);
* two tenants (``acme``, ``globex``) with documents, some of them sensitive;
* ``GET /profile/form`` + ``POST /profile``: a CSRF-protected form (double-submit cookie: the
  ``X-CSRF-Token`` header must equal the ``csrf_token`` cookie);
* an admin area: ``POST /admin/users``, ``DELETE /admin/users/{user_name}``.

Security events are recorded with :mod:`otel_secaudit.helpers` and :func:`otel_secaudit.record`
at the point where the application decides; everything else (client address through trusted
proxies, 401/403 status events, abuse detection, blocks) comes from the instrumentation, as it
would under ``opentelemetry-instrument``.

The credentials below are demo fixtures, printed by ``otel-secaudit demo --serve``.
"""

# No ``from __future__ import annotations``: FastAPI resolves the endpoint annotations below,
# which name dependencies local to create_app().

import hashlib
import hmac
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

import jwt
import pyotp
from fastapi import Depends, HTTPException, Request, Response
from pydantic import BaseModel

import otel_secaudit
from otel_secaudit import helpers

__all__ = ["DEMO_PASSWORDS", "DemoDirectory", "User", "create_app"]

_PBKDF2_ROUNDS: Final = 20_000
CSRF_COOKIE: Final = "csrf_token"
CSRF_HEADER: Final = "x-csrf-token"

ROLE_PERMISSIONS: Final[dict[str, frozenset[str]]] = {
    "member": frozenset({"documents:read", "profile:write"}),
    "admin": frozenset(
        {"documents:read", "profile:write", "users:create", "users:delete", "audit:read"}
    ),
}

#: Demo credentials (user name -> password).
DEMO_PASSWORDS: Final = {
    "alice": "alice-demo-password",
    "bob": "bob-demo-password",
    "carol": "carol-demo-password",
    "root": "root-demo-password",
}


def _hash_password(password: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, _PBKDF2_ROUNDS)


@dataclass
class User:
    """A demo account."""

    id: str
    name: str
    tenant: str
    roles: tuple[str, ...]
    totp_secret: str
    salt: bytes
    password_hash: bytes

    def permissions(self) -> frozenset[str]:
        granted: set[str] = set()
        for role in self.roles:
            granted |= ROLE_PERMISSIONS.get(role, frozenset())
        return frozenset(granted)

    def check_password(self, password: str) -> bool:
        return hmac.compare_digest(_hash_password(password, self.salt), self.password_hash)

    def current_totp(self) -> str:
        return pyotp.TOTP(self.totp_secret).now()


@dataclass
class Document:
    id: int
    tenant: str
    title: str
    sensitive: bool


@dataclass
class DemoDirectory:
    """Users, documents, the token key and the revocation list of one demo run."""

    token_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    token_ttl: int = 900
    users: dict[str, User] = field(default_factory=dict)
    documents: dict[int, Document] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _dummy_salt: bytes = field(default_factory=lambda: secrets.token_bytes(16))

    @classmethod
    def seeded(cls) -> "DemoDirectory":
        """Four users in two tenants and a few documents."""
        directory = cls()
        for number, (name, tenant, roles) in enumerate(
            [
                ("alice", "acme", ("member",)),
                ("bob", "acme", ("member",)),
                ("carol", "globex", ("member",)),
                ("root", "acme", ("admin",)),
            ],
            start=1001,
        ):
            directory.add_user(f"u-{number}", name, tenant, roles, DEMO_PASSWORDS[name])
        for doc in (
            Document(1, "acme", "Board minutes Q3", True),
            Document(2, "acme", "Product roadmap", False),
            Document(7, "globex", "Merger plan", True),
            Document(8, "globex", "Office party", False),
        ):
            directory.documents[doc.id] = doc
        return directory

    def add_user(
        self, user_id: str, name: str, tenant: str, roles: tuple[str, ...], password: str
    ) -> User:
        salt = secrets.token_bytes(16)
        user = User(
            user_id,
            name,
            tenant,
            roles,
            pyotp.random_base32(),
            salt,
            _hash_password(password, salt),
        )
        with self.lock:
            self.users[name] = user
        return user

    def authenticate(self, name: str, password: str) -> User | None:
        user = self.users.get(name)
        if user is None:
            _hash_password(password, self._dummy_salt)  # same cost: no user-enumeration timing
            return None
        return user if user.check_password(password) else None

    def issue_token(self, user: User, ttl: int | None = None) -> str:
        """A signed access token; a negative ``ttl`` gives an already expired one."""
        now = int(time.time())
        claims = {
            "sub": user.id,
            "name": user.name,
            "tid": user.tenant,
            "roles": list(user.roles),
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + (self.token_ttl if ttl is None else ttl),
        }
        return jwt.encode(claims, self.token_key, algorithm="HS256")

    def user_by_id(self, user_id: str) -> User | None:
        return next((u for u in self.users.values() if u.id == user_id), None)


class Login(BaseModel):
    """``POST /auth/login`` body."""

    username: str
    password: str
    totp: str = ""


class NewUser(BaseModel):
    """``POST /admin/users`` body."""

    username: str
    password: str
    tenant: str
    roles: list[str] = ["member"]


class Profile(BaseModel):
    """``POST /profile`` body."""

    display_name: str


@dataclass
class Principal:
    """The authenticated caller of a request."""

    user: User
    jti: str


def _unverified_jti(token: str) -> str | None:
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    jti = claims.get("jti")
    return jti if isinstance(jti, str) else None


class Guards:
    """The request guards the routes depend on: the bearer token's principal, a permission,
    the caller's own tenant. Each refusal records its security event first."""

    def __init__(self, directory: DemoDirectory) -> None:
        self.directory = directory

    def current_principal(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            # No application event: the middleware records the 401 as auth.unauthenticated.
            raise HTTPException(401, "missing bearer token")
        try:
            claims = jwt.decode(
                token,
                self.directory.token_key,
                algorithms=["HS256"],
                options={"require": ["exp", "jti", "sub"]},
            )
        except jwt.PyJWTError as exc:
            helpers.token_failure(exc, jti=_unverified_jti(token))
            raise HTTPException(401, "invalid token") from None
        with self.directory.lock:
            revoked = claims["jti"] in self.directory.revoked
        if revoked:
            helpers.token_revoked(claims["jti"], user_id=claims["sub"])
            raise HTTPException(401, "token revoked")
        user = self.directory.user_by_id(str(claims["sub"]))
        if user is None:
            otel_secaudit.record(
                "auth.token.claims_invalid", reason="unknown_subject", user_id=str(claims["sub"])
            )
            raise HTTPException(401, "invalid token")
        request.state.user_id = user.id  # the middleware puts it on every event of the request
        return Principal(user, claims["jti"])

    def require(self, permission: str) -> Any:
        """A dependency: the principal, refused with 403 without ``permission``."""

        def check(principal: Annotated[Principal, Depends(self.current_principal)]) -> Principal:
            if permission not in principal.user.permissions():
                helpers.permission_denied(
                    permission, user_id=principal.user.id, tenant_id=principal.user.tenant
                )
                raise HTTPException(403, "forbidden")
            return principal

        return check

    @staticmethod
    def same_tenant(principal: Principal, tenant_id: str, resource_type: str) -> None:
        if tenant_id != principal.user.tenant:
            helpers.cross_tenant(
                principal.user.id, principal.user.tenant, tenant_id, resource_type=resource_type
            )
            raise HTTPException(403, "forbidden")


def create_app(directory: DemoDirectory | None = None) -> Any:
    """Build the demo FastAPI application.

    ``fastapi.FastAPI`` is looked up at call time, so an application built after
    ``FastAPIInstrumentor().instrument()`` is instrumented, exactly as under
    ``opentelemetry-instrument``.
    """
    import fastapi

    directory = directory or DemoDirectory.seeded()
    app = fastapi.FastAPI(title="otel-secaudit demo", docs_url=None, redoc_url=None)
    app.state.directory = directory
    guards = Guards(directory)
    _auth_routes(app, directory, guards)
    _document_routes(app, directory, guards)
    _profile_routes(app, guards)
    _admin_routes(app, directory, guards)
    return app


def _auth_routes(app: Any, directory: DemoDirectory, guards: Guards) -> None:
    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/auth/login")
    def login(form: Login) -> dict[str, Any]:
        user = directory.authenticate(form.username, form.password)
        if user is None:
            helpers.login_failed(form.username)
            raise HTTPException(401, "invalid credentials")
        if not pyotp.TOTP(user.totp_secret).verify(form.totp, valid_window=1):
            otel_secaudit.record("auth.mfa.failed", user_id=user.id, reason="invalid_totp")
            raise HTTPException(401, "invalid credentials")
        helpers.login_succeeded(user.id, tenant_id=user.tenant)
        return {"access_token": directory.issue_token(user), "token_type": "bearer"}

    @app.post("/auth/logout")
    def logout(
        principal: Annotated[Principal, Depends(guards.current_principal)],
    ) -> dict[str, str]:
        with directory.lock:
            directory.revoked.add(principal.jti)
        otel_secaudit.record("auth.logout", user_id=principal.user.id)
        return {"status": "logged out"}

    @app.get("/me")
    def me(principal: Annotated[Principal, Depends(guards.current_principal)]) -> dict[str, Any]:
        user = principal.user
        return {"id": user.id, "name": user.name, "tenant": user.tenant, "roles": user.roles}


def _document_routes(app: Any, directory: DemoDirectory, guards: Guards) -> None:
    @app.get("/tenants/{tenant_id}/documents")
    def list_documents(
        tenant_id: str, principal: Annotated[Principal, Depends(guards.require("documents:read"))]
    ) -> list[dict[str, Any]]:
        guards.same_tenant(principal, tenant_id, "document")
        return [
            {"id": d.id, "title": d.title, "sensitive": d.sensitive}
            for d in directory.documents.values()
            if d.tenant == tenant_id
        ]

    @app.get("/tenants/{tenant_id}/documents/{document_id}")
    def read_document(
        tenant_id: str,
        document_id: int,
        principal: Annotated[Principal, Depends(guards.require("documents:read"))],
    ) -> dict[str, Any]:
        guards.same_tenant(principal, tenant_id, "document")
        doc = directory.documents.get(document_id)
        if doc is None or doc.tenant != tenant_id:
            raise HTTPException(404, "no such document")
        if doc.sensitive:
            otel_secaudit.record(
                "data.sensitive.accessed",
                user_id=principal.user.id,
                tenant_id=tenant_id,
                resource_type="document",
                resource_id=doc.id,
                action="read",
            )
        return {"id": doc.id, "title": doc.title, "body": f"(contents of {doc.title})"}


def _profile_routes(app: Any, guards: Guards) -> None:
    @app.get("/profile/form")
    def profile_form(
        response: Response, principal: Annotated[Principal, Depends(guards.current_principal)]
    ) -> dict[str, str]:
        token = secrets.token_urlsafe(24)
        response.set_cookie(CSRF_COOKIE, token, httponly=False, samesite="strict")
        return {"csrf_token": token, "display_name": principal.user.name}

    @app.post("/profile")
    def update_profile(
        form: Profile,
        request: Request,
        principal: Annotated[Principal, Depends(guards.require("profile:write"))],
    ) -> dict[str, str]:
        cookie = request.cookies.get(CSRF_COOKIE, "")
        header = request.headers.get(CSRF_HEADER, "")
        if not cookie or not header:
            helpers.csrf_mismatch(reason="missing_token", user_id=principal.user.id)
            raise HTTPException(403, "CSRF check failed")
        if not hmac.compare_digest(cookie, header):
            helpers.csrf_mismatch(user_id=principal.user.id)
            raise HTTPException(403, "CSRF check failed")
        return {"status": "saved", "display_name": form.display_name[:64]}


def _admin_routes(app: Any, directory: DemoDirectory, guards: Guards) -> None:
    @app.post("/admin/users", status_code=201)
    def create_user(
        form: NewUser, principal: Annotated[Principal, Depends(guards.require("users:create"))]
    ) -> dict[str, str]:
        if form.username in directory.users:
            raise HTTPException(409, "exists")
        roles = tuple(r for r in form.roles if r in ROLE_PERMISSIONS) or ("member",)
        user = directory.add_user(
            f"u-{2000 + len(directory.users)}", form.username, form.tenant, roles, form.password
        )
        otel_secaudit.record(
            "admin.user.created",
            user_id=principal.user.id,
            tenant_id=user.tenant,
            resource_type="user",
            resource_id=user.id,
            action="create",
        )
        return {"id": user.id, "totp_secret": user.totp_secret}

    @app.delete("/admin/users/{user_name}")
    def delete_user(
        user_name: str, principal: Annotated[Principal, Depends(guards.require("users:delete"))]
    ) -> dict[str, str]:
        with directory.lock:
            user = directory.users.pop(user_name, None)
        if user is None:
            raise HTTPException(404, "no such user")
        otel_secaudit.record(
            "admin.user.deleted",
            user_id=principal.user.id,
            tenant_id=user.tenant,
            resource_type="user",
            resource_id=user.id,
            action="delete",
        )
        return {"status": "deleted", "id": user.id}
