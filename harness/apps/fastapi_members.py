"""Members: a small FastAPI app of ours built on the fastapi-users library, for
tests/test_fastapi_users.py.

The app keeps member accounts in SQLite (fastapi-users' SQLAlchemy adapter over aiosqlite, a
``members.db`` in the folder named by ``MEMBERS_DB_DIR``) and signs members in with a JWT
bearer token. Every account route is one of fastapi-users' own routers, mounted where its
documentation mounts them, so the test meets the library's real answers (400
``LOGIN_BAD_CREDENTIALS`` for a wrong password, 400 for a bad reset or verification token, 202
for a forgotten password...):

- ``POST /auth/register``;
- ``POST /auth/jwt/login`` (a form: ``username``, ``password``) and ``POST /auth/jwt/logout``;
- ``POST /auth/forgot-password`` and ``POST /auth/reset-password``;
- ``POST /auth/request-verify-token`` and ``POST /auth/verify``;
- ``GET``/``PATCH /users/me`` and ``/users/{id}``;
- ``GET /authenticated-route``: a greeting for a signed-in member, 401 without a token.

There is no mail server: what a member would get by e-mail (a reset or a verification token)
is one line on stdout, ``... Reset token: <token>`` or ``... Verification token: <token>``,
where the test reads it. Nothing here knows otel_secaudit: the test configures the plugin with
``OTEL_SECAUDIT_*`` environment variables only.

Serve it with ``MEMBERS_DB_DIR=/some/folder uvicorn harness.apps.fastapi_members:app``.
"""

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi_users import (
    BaseUserManager,
    FastAPIUsers,
    IntegerIDMixin,
    InvalidPasswordException,
    schemas,
)
from fastapi_users.authentication import AuthenticationBackend, BearerTransport, JWTStrategy
from fastapi_users_db_sqlalchemy import SQLAlchemyBaseUserTable, SQLAlchemyUserDatabase
from sqlalchemy import Integer
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Signs access, reset and verification tokens. A new one at every start: nothing a member
#: holds needs to outlive the process.
SIGNING_KEY = secrets.token_urlsafe(32)
ACCESS_TOKEN_SECONDS = 15 * 60
MIN_PASSWORD_LENGTH = 10


class Table(DeclarativeBase):
    """The base of the app's tables."""


class Member(SQLAlchemyBaseUserTable[int], Table):
    """A member account: fastapi-users' columns (e-mail, password hash, active, superuser,
    verified) under an integer key."""

    __tablename__ = "member"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)


class MemberOut(schemas.BaseUser[int]):
    """A member as the API shows it (never the password hash)."""


class Registration(schemas.BaseUserCreate):
    """What ``POST /auth/register`` takes: an e-mail address and a password."""


class MemberChanges(schemas.BaseUserUpdate):
    """What ``PATCH /users/...`` may change."""


class MemberRules(IntegerIDMixin, BaseUserManager[Member, int]):
    """The app's account rules and what happens after the library's account events."""

    reset_password_token_secret = SIGNING_KEY
    verification_token_secret = SIGNING_KEY

    async def validate_password(self, password: str, user: schemas.BaseUserCreate | Member) -> None:
        """Registrations and resets need a password of at least ``MIN_PASSWORD_LENGTH``."""
        if len(password) < MIN_PASSWORD_LENGTH:
            raise InvalidPasswordException(
                reason=f"a password has at least {MIN_PASSWORD_LENGTH} characters"
            )

    async def on_after_forgot_password(
        self, user: Member, token: str, request: Request | None = None
    ) -> None:
        send_to_inbox(user, f"Reset token: {token}")

    async def on_after_request_verify(
        self, user: Member, token: str, request: Request | None = None
    ) -> None:
        send_to_inbox(user, f"Verification token: {token}")


def send_to_inbox(member: Member, message: str) -> None:
    """Stands in for an e-mail to ``member``: one line on stdout."""
    print(f"mail to member {member.id}: {message}", flush=True)


class Accounts:
    """The accounts database of one app and the fastapi-users pieces that use it."""

    def __init__(self, database_url: str) -> None:
        self.engine = create_async_engine(database_url)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.bearer = AuthenticationBackend(
            name="jwt",
            transport=BearerTransport(tokenUrl="auth/jwt/login"),
            get_strategy=self.token_strategy,
        )
        self.library = FastAPIUsers[Member, int](self.rules, [self.bearer])

    async def create_tables(self) -> None:
        """Create the member table if the database has none (at startup)."""
        async with self.engine.begin() as connection:
            await connection.run_sync(Table.metadata.create_all)

    async def rules(self) -> AsyncIterator[MemberRules]:
        """The account rules over a database session of their own (a FastAPI dependency)."""
        async with self.sessions() as session:
            yield MemberRules(SQLAlchemyUserDatabase(session, Member))

    def token_strategy(self) -> JWTStrategy[Member, int]:
        """How access tokens are made and read: JWTs signed with :data:`SIGNING_KEY`."""
        return JWTStrategy(secret=SIGNING_KEY, lifetime_seconds=ACCESS_TOKEN_SECONDS)


def create_app(database_url: str) -> FastAPI:
    """The Members app over the database at ``database_url`` (tables made at startup)."""
    accounts = Accounts(database_url)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await accounts.create_tables()
        yield
        await accounts.engine.dispose()

    app = FastAPI(title="Members", lifespan=lifespan)
    library = accounts.library
    app.include_router(library.get_auth_router(accounts.bearer), prefix="/auth/jwt")
    app.include_router(library.get_register_router(MemberOut, Registration), prefix="/auth")
    app.include_router(library.get_reset_password_router(), prefix="/auth")
    app.include_router(library.get_verify_router(MemberOut), prefix="/auth")
    app.include_router(library.get_users_router(MemberOut, MemberChanges), prefix="/users")
    signed_in = library.current_user(active=True)

    @app.get("/authenticated-route")
    async def greeting(member: Annotated[Member, Depends(signed_in)]) -> dict[str, str]:
        return {"message": f"Welcome back, {member.email}"}

    return app


app = create_app(
    "sqlite+aiosqlite:///" + os.path.join(os.environ.get("MEMBERS_DB_DIR", "."), "members.db")
)
