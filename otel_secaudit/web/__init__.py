"""Web integration: the framework-independent request core and its adapters.

* :mod:`.client`: the client address through trusted proxies (one configured header).
* status rules and login routes are parsed and matched in :mod:`otel_secaudit.route_rules`
  (below configuration, which parses them from the environment).
* :mod:`.exchange`: the request core every adapter shares (blocks, login routes, status
  events, one request one violation); see its documentation for the adapter protocol.
* :mod:`.user_names` (with :mod:`.name_parsers`, :mod:`.json_names`): the submitted user
  name(s) of an authentication attempt, read as the application's framework reads the body.
* :mod:`.server_span`: scrubbing the server span other instrumentations opened.
* :mod:`.asgi`: the pure ASGI middleware; :mod:`.starlette`: where it goes in Starlette/FastAPI.
* :mod:`.wsgi_core`: the one WSGI request lifecycle (open and scrub, refuse or admit, finish)
  and the framework signals' recording; :mod:`.wsgi`, :mod:`.django`, :mod:`.flask`: the WSGI
  middleware and the Django and Flask adapters on it; :mod:`.django_redirects`: a signed-in
  user sent to a login page.
* :mod:`.instrumentor`: :class:`SecAuditInstrumentor`, wiring only.

Importing this package imports no web framework.
"""

from __future__ import annotations
