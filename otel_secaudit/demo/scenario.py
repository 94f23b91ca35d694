"""The scripted attack scenario, played with real HTTP requests against the served demo app.

The demo server trusts ``X-Forwarded-For`` from 127.0.0.1 (``OTEL_SECAUDIT_TRUSTED_PROXIES``),
so the scenario plays several clients from one machine, as a reverse proxy would forward them:

===================  ==============  ======================================================
actor                client address  what it does
===================  ==============  ======================================================
alice                192.0.2.10      logs in (password + TOTP), reads documents, opens a
                                     sensitive one, saves her profile (CSRF ok), logs out;
                                     her old token is replayed (revoked)
brute-forcer         203.0.113.7     guesses alice's password until blocked
credential stuffer   198.51.100.23   one password each for many user names until blocked
bob                  192.0.2.44      probes tenant ``globex`` documents (cross-tenant)
forged form          192.0.2.10      a profile POST with the wrong CSRF token
stale client         192.0.2.77      an expired token, a forged token, no token at all
root (admin)         192.0.2.5       a wrong TOTP, then creates and deletes a user; alice
                                     tries the admin area (permission denied)
===================  ==============  ======================================================

After the attacks the scenario waits for the brute-forcer's block to end and sends one more
request from that address, which is served again (``abuse.block.ended``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import httpx

from .app import DEMO_PASSWORDS, DemoDirectory

__all__ = ["ADDRESSES", "Outcome", "Scenario", "Step"]

ADDRESSES: Final = {
    "alice": "192.0.2.10",
    "brute_force": "203.0.113.7",
    "stuffing": "198.51.100.23",
    "bob": "192.0.2.44",
    "stale": "192.0.2.77",
    "root": "192.0.2.5",
}

_STUFFED_NAMES: Final = (
    "admin",
    "administrator",
    "test",
    "guest",
    "info",
    "support",
    "oracle",
    "user",
    "demo",
    "sales",
    "ftp",
    "postgres",
    "web",
    "backup",
    "mail",
    "office",
    "jenkins",
    "git",
)


#: The brute-forcer's password guesses (the Django demo plays the same ones).
GUESSES: Final = (
    "123456",
    "password",
    "alice2024",
    "qwerty",
    "letmein",
    "welcome1",
    "iloveyou",
    "sunshine",
    "dragon",
    "monkey",
    "football",
    "princess",
    "shadow",
)


@dataclass
class Step:
    """One HTTP request of the scenario (``run`` returns the status code)."""

    phase: str
    run: Callable[[], int]


@dataclass
class Outcome:
    """What the scenario did: the status code of each step, per phase (the report is the
    telemetry's view)."""

    statuses: dict[str, list[int]] = field(default_factory=dict)
    steps: int = 0

    def add(self, phase: str, status: int) -> None:
        self.statuses.setdefault(phase, []).append(status)
        self.steps += 1


class Scenario:
    """Builds the steps against ``base_url``; ``short`` trims the benign traffic (tests)."""

    def __init__(
        self,
        client: httpx.Client,
        directory: DemoDirectory,
        *,
        short: bool = False,
        block_seconds: float = 0.0,
    ) -> None:
        self.client = client
        self.directory = directory
        self.short = short
        self.block_seconds = block_seconds
        self.tokens: dict[str, str] = {}
        self.outcome = Outcome()

    # -- requests -------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        address: str,
        *,
        token: str | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
        cookies: dict[str, str] | None = None,
    ) -> httpx.Response:
        sent = {"X-Forwarded-For": address, "User-Agent": "otel-secaudit-demo/1.0"}
        if token:
            sent["Authorization"] = f"Bearer {token}"
        sent.update(headers or {})
        if cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        return self.client.request(method, path, json=json, headers=sent)

    def _login(
        self, name: str, address: str, password: str | None = None, totp: str | None = None
    ) -> int:
        user = self.directory.users.get(name)
        code = totp if totp is not None else (user.current_totp() if user else "000000")
        response = self._request(
            "POST",
            "/auth/login",
            address,
            json={
                "username": name,
                "password": DEMO_PASSWORDS.get(name, "x") if password is None else password,
                "totp": code,
            },
        )
        if response.status_code == 200:
            self.tokens[name] = response.json()["access_token"]
        return response.status_code

    def _get_as(self, path: str, address: str, user: str) -> int:
        """GET with ``user``'s token as it is when the step runs (after its login step)."""
        return self._get(path, address, self.tokens[user])

    def _get(self, path: str, address: str, token: str | None = None) -> int:
        return self._request("GET", path, address, token=token).status_code

    # -- phases ---------------------------------------------------------------------------

    def _normal_session(self) -> list[Step]:
        a = ADDRESSES["alice"]
        steps = [Step("normal session", lambda: self._login("alice", a))]
        browse = 2 if self.short else 12
        for i in range(browse):
            path = "/me" if i % 3 == 0 else "/tenants/acme/documents"
            steps.append(Step("normal session", partial(self._get_as, path, a, "alice")))
        steps.append(
            Step(
                "normal session",
                lambda: self._get("/tenants/acme/documents/1", a, self.tokens["alice"]),
            )
        )
        steps.append(Step("normal session", lambda: self._profile(a, forged=False)))
        return steps

    def _profile(self, address: str, *, forged: bool) -> int:
        token = self.tokens["alice"]
        form = self._request("GET", "/profile/form", address, token=token)
        cookie = form.json()["csrf_token"]
        header = "forged-by-another-site" if forged else cookie
        return self._request(
            "POST",
            "/profile",
            address,
            token=token,
            json={"display_name": "Alice"},
            headers={"X-CSRF-Token": header},
            cookies={"csrf_token": cookie},
        ).status_code

    def _brute_force(self) -> list[Step]:
        address = ADDRESSES["brute_force"]
        return [
            Step(
                "password brute force",
                partial(self._login, "alice", address, password=g, totp="000000"),
            )
            for g in GUESSES
        ]

    def _stuffing(self) -> list[Step]:
        address = ADDRESSES["stuffing"]
        return [
            Step(
                "credential stuffing",
                partial(self._login, n, address, password="Summer2024!", totp="000000"),
            )
            for n in _STUFFED_NAMES
        ]

    def _cross_tenant(self) -> list[Step]:
        address = ADDRESSES["bob"]
        steps = [Step("cross-tenant probe", lambda: self._login("bob", address))]
        for path in (
            "/tenants/globex/documents",
            "/tenants/globex/documents/7",
            "/tenants/globex/documents/8",
            "/tenants/globex/documents/9",
            "/tenants/globex/documents/10",
            "/tenants/globex/documents/11",
        ):
            steps.append(
                Step(
                    "cross-tenant probe",
                    partial(self._get_as, path, address, "bob"),
                )
            )
        return steps

    def _tokens(self) -> list[Step]:
        address = ADDRESSES["stale"]
        alice = self.directory.users["alice"]

        def expired() -> int:
            return self._get("/me", address, self.directory.issue_token(alice, ttl=-120))

        def forged() -> int:
            genuine = self.directory.issue_token(alice)
            head, payload, _ = genuine.split(".")
            return self._get("/me", address, f"{head}.{payload}.c2lnbmF0dXJlLWZvcmdlZA")

        def anonymous() -> int:
            return self._get("/me", address)

        return [Step("expired and invalid tokens", fn) for fn in (expired, forged, anonymous)]

    def _csrf_and_logout(self) -> list[Step]:
        a = ADDRESSES["alice"]

        def logout() -> int:
            return self._request("POST", "/auth/logout", a, token=self.tokens["alice"]).status_code

        return [
            Step("CSRF mismatch", lambda: self._profile(a, forged=True)),
            Step("logout and revoked token", logout),
            Step("logout and revoked token", lambda: self._get("/me", a, self.tokens["alice"])),
        ]

    def _admin(self) -> list[Step]:
        r = ADDRESSES["root"]

        def create() -> int:
            return self._request(
                "POST",
                "/admin/users",
                r,
                token=self.tokens["root"],
                json={"username": "dave", "password": "dave-demo-password", "tenant": "acme"},
            ).status_code

        def delete() -> int:
            return self._request(
                "DELETE", "/admin/users/dave", r, token=self.tokens["root"]
            ).status_code

        def alice_tries() -> int:
            token = self.directory.issue_token(self.directory.users["alice"])
            return self._request(
                "DELETE", "/admin/users/bob", ADDRESSES["alice"], token=token
            ).status_code

        return [
            Step("admin actions", lambda: self._login("root", r, totp="000000")),
            Step("admin actions", lambda: self._login("root", r)),
            Step("admin actions", create),
            Step("admin actions", delete),
            Step("admin actions", alice_tries),
        ]

    def _after_block(self) -> list[Step]:
        address = ADDRESSES["brute_force"]

        def come_back() -> int:
            # Wait out the block (the detector ends it and records abuse.block.ended).
            time.sleep(self.block_seconds + 0.5)
            return self._get("/health", address)

        return [Step("block expires", come_back)] if self.block_seconds > 0 else []

    def steps(self) -> list[Step]:
        """Every request of the scenario, in order."""
        return [
            *self._normal_session(),
            *self._brute_force(),
            *self._stuffing(),
            *self._cross_tenant(),
            *self._tokens(),
            *self._csrf_and_logout(),
            *self._admin(),
            *self._after_block(),
        ]

    def play(
        self,
        on_step: Callable[[Step, int], None] | None = None,
        pause: float = 0.0,
    ) -> Outcome:
        """Run every step; ``on_step(step, status)`` after each (the progress bar)."""
        for step in self.steps():
            status = step.run()
            self.outcome.add(step.phase, status)
            if on_step is not None:
                on_step(step, status)
            if pause:
                time.sleep(pause)
        return self.outcome
