"""The Django demo's scenario, over real HTTP (a subset of the FastAPI demo's, see
:mod:`otel_secaudit.demo.scenario`); each actor is an HTTP client with its own cookie jar, as
a browser is, and its address is forwarded by the trusted loopback proxy (``X-Forwarded-For``).

===================  ==============  ======================================================
actor                client address  what it does
===================  ==============  ======================================================
alice                192.0.2.10      signs in with Django's LoginView, reads her documents,
                                     opens the user administration (403: no permission),
                                     posts a form with a forged CSRF token (403), signs out
brute-forcer         203.0.113.7     guesses alice's password until blocked (429)
root                 192.0.2.5       signs in and opens the user administration (200)
===================  ==============  ======================================================

Then, when blocks are on, it waits for the brute-forcer's block to end and that address is
served again (``abuse.block.ended``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from functools import partial
from typing import Final

import httpx

from ..scenario import GUESSES, Outcome, Step
from . import DJANGO_DEMO_PASSWORDS

__all__ = ["DJANGO_ADDRESSES", "GUESSES", "DjangoScenario"]

DJANGO_ADDRESSES: Final = {
    "alice": "192.0.2.10",
    "brute_force": "203.0.113.7",
    "root": "192.0.2.5",
}
LOGIN: Final = "/accounts/login/"
_TOKEN: Final = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


class DjangoScenario:
    """Builds the steps against ``base_url``; ``short`` trims the benign traffic (tests).
    :meth:`close` closes the actors' clients."""

    def __init__(self, base_url: str, *, short: bool = False, block_seconds: float = 0.0) -> None:
        self.base_url = base_url
        self.short = short
        self.block_seconds = block_seconds
        self.clients: dict[str, httpx.Client] = {}
        self.tokens: dict[str, str] = {}
        self.outcome = Outcome()

    def _client(self, actor: str) -> httpx.Client:
        client = self.clients.get(actor)
        if client is None:
            client = httpx.Client(
                base_url=self.base_url,
                timeout=30,
                headers={
                    "X-Forwarded-For": DJANGO_ADDRESSES[actor],
                    "User-Agent": "otel-secaudit-demo/1.0",
                },
            )
            self.clients[actor] = client
        return client

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.clients.clear()

    # -- requests -------------------------------------------------------------------------

    def _login_page(self, actor: str) -> int:
        """GET the login form: the CSRF cookie and the form's token."""
        response = self._client(actor).get(LOGIN)
        found = _TOKEN.search(response.text)
        if found is not None:
            self.tokens[actor] = found.group(1)
        return response.status_code

    def _post(self, actor: str, path: str, data: dict[str, str], token: str | None = None) -> int:
        """POST a form with ``token``, else the CSRF token as a page script would read it:
        the form's before signing in, the ``csrftoken`` cookie after (Django rotates the
        token when a user signs in)."""
        client = self._client(actor)
        if token is None:
            token = client.cookies.get("csrftoken") or self.tokens.get(actor, "")
        form = {**data, "csrfmiddlewaretoken": token}
        return client.post(path, data=form).status_code

    def _login(self, actor: str, user: str, password: str) -> int:
        return self._post(actor, LOGIN, {"username": user, "password": password})

    def _get(self, actor: str, path: str) -> int:
        return self._client(actor).get(path).status_code

    # -- phases ---------------------------------------------------------------------------

    def _normal_session(self) -> list[Step]:
        steps = [
            Step("normal sign-in", partial(self._login_page, "alice")),
            Step(
                "normal sign-in",
                partial(self._login, "alice", "alice", DJANGO_DEMO_PASSWORDS["alice"]),
            ),
        ]
        for _ in range(1 if self.short else 8):
            steps.append(Step("normal sign-in", partial(self._get, "alice", "/documents/")))
        return steps

    def _brute_force(self) -> list[Step]:
        steps = [Step("password brute force", partial(self._login_page, "brute_force"))]
        for guess in GUESSES:
            run = partial(self._login, "brute_force", "alice", guess)
            steps.append(Step("password brute force", run))
        return steps

    def _alice_misbehaves(self) -> list[Step]:
        forged = "forgedByAnotherSite" + "x" * 45  # a well-formed token, not alice's
        return [
            Step("permission denied", partial(self._get, "alice", "/admin/users/")),
            Step(
                "CSRF mismatch",
                partial(self._post, "alice", "/accounts/logout/", {}, token=forged),
            ),
            Step("sign-out", partial(self._post, "alice", "/accounts/logout/", {})),
        ]

    def _root(self) -> list[Step]:
        password = DJANGO_DEMO_PASSWORDS["root"]
        return [
            Step("admin sign-in", partial(self._login_page, "root")),
            Step("admin sign-in", partial(self._login, "root", "root", password)),
            Step("admin sign-in", partial(self._get, "root", "/admin/users/")),
        ]

    def _after_block(self) -> list[Step]:
        def come_back() -> int:
            # Wait out the block (the detector ends it and records abuse.block.ended).
            time.sleep(self.block_seconds + 0.5)
            return self._get("brute_force", "/health/")

        return [Step("block expires", come_back)] if self.block_seconds > 0 else []

    def steps(self) -> list[Step]:
        """Every request of the scenario, in order."""
        return [
            *self._normal_session(),
            *self._brute_force(),
            *self._alice_misbehaves(),
            *self._root(),
            *self._after_block(),
        ]

    def play(self, on_step: Callable[[Step, int], None] | None = None) -> Outcome:
        """Run every step; ``on_step(step, status)`` after each."""
        for step in self.steps():
            status = step.run()
            self.outcome.add(step.phase, status)
            if on_step is not None:
                on_step(step, status)
        return self.outcome
