"""The submitted user name(s) of an authentication attempt, read the way the application's
framework reads them (README, "Logins without configuration").

Attackers choose the differential: if the plugin read ``username=decoy&username=target``
differently from the framework, every failure of a brute force on *target* would be hashed to
*decoy*. So nothing here has its own idea of a form:

* Werkzeug/Flask and Django: :func:`names_from_form` and :func:`names_from_json` read what the
  framework itself parsed, after the view (``request.form`` keeps the first of duplicate fields,
  Django's ``request.POST`` the last; ``.get`` of each framework applies its own rule).
* ASGI (Starlette/FastAPI): :class:`BodyNames` is fed the body chunks the application reads
  through ``receive`` and parses them as Starlette does: python-multipart's
  ``QuerystringParser`` and ``MultipartParser`` with Starlette's decoding (latin-1 then
  ``unquote_plus`` for url-encoded forms; the request's charset, else latin-1, for multipart
  fields), the last of duplicate fields. Chunked bodies are just chunks.
* JSON, everywhere: the last of duplicate keys, as ``json.loads``; the body's encoding is
  detected as ``json.loads`` detects it.

Memory is bounded whatever the body's size: up to 64 KiB is kept as received (and a JSON body
that size is decoded by ``json.loads`` itself); past that, forms are parsed as they stream and
JSON is written to an unlinked temporary file, scanned only when its names are asked for (the
top-level object exactly; below it, brackets and strings are checked, commas, colons and
literals are not). Streaming parsers keep only the values of the OTEL_SECAUDIT_LOGIN_USER_FIELDS
(each capped at :data:`MAX_NAME_CHARS`; a longer value is no name, and as the framework's
choice it hides the earlier ones). Nothing else of a body is kept.

When several user fields hold different names (``{"username": decoy, "email": target}``), every
one is a *candidate*: the exchange counts a failure for each and attributes a success to none.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any, Final

from .json_names import JsonParser
from .name_parsers import (
    MAX_NAME_CHARS,
    MultipartParser,
    NameParser,
    Picker,
    UrlencodedParser,
    candidates,
    urlencoded_names,
)

__all__ = [
    "MAX_NAME_CHARS",
    "BodyNames",
    "NameSource",
    "candidates",
    "names_from_form",
    "names_from_json",
    "names_from_json_bytes",
]

#: Body bytes kept before parsing starts (parsing costs nothing unless the names are asked
#: for, or the body is larger).
_LAZY_BYTES: Final = 64 * 1024


def names_from_form(form: Any, fields: Sequence[str]) -> tuple[str, ...]:
    """Candidates from a form the framework parsed (Werkzeug ``MultiDict``, Django
    ``QueryDict``): its own ``get`` picks among duplicate fields as the application's
    ``request.form[...]`` / ``request.POST[...]`` does."""
    get = getattr(form, "get", None)
    if not callable(get):
        return ()
    return candidates([get(name) for name in fields])


def names_from_json(document: object, fields: Sequence[str]) -> tuple[str, ...]:
    """Candidates from a decoded JSON document (an object; anything else names no user)."""
    if not isinstance(document, Mapping):
        return ()
    return candidates([document.get(name) for name in fields])


def names_from_json_bytes(body: bytes, fields: Sequence[str]) -> tuple[str, ...]:
    """Candidates of a JSON body as the application decodes it with ``json.loads`` (streamed,
    so a large body costs no copy of itself)."""
    reader = BodyNames("application/json", fields)
    reader.feed(body, more=False)
    return reader.names()


# --------------------------------------------------------------------------------------------
# Streaming: the body chunks an ASGI application reads


def _kind(content_type: str | None) -> tuple[str, Mapping[bytes, bytes]]:
    """``(kind, params)`` of a Content-Type, as Starlette parses it (python-multipart's
    ``parse_options_header``, whose media type is the part before ``;``, stripped and
    lower-cased; only multipart needs the parameters). No Content-Type is JSON, as FastAPI
    reads a body then."""
    if not content_type:
        return "json", {}
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == "application/x-www-form-urlencoded":
        return "urlencoded", {}
    if mime == "multipart/form-data":
        from python_multipart.multipart import parse_options_header

        return "multipart", parse_options_header(content_type)[1]
    if mime.startswith("application/") and (mime.endswith("/json") or mime.endswith("+json")):
        return "json", {}
    return "", {}


class BodyNames:
    """Incremental user-name reader of one request body: :meth:`feed` it every chunk the
    application reads, ask :meth:`names` when needed. Never raises from :meth:`feed` or
    :meth:`names` for any body (a body it cannot read names no user).

    Args:
        content_type: the request's Content-Type header.
        fields: the user fields (OTEL_SECAUDIT_LOGIN_USER_FIELDS).
    """

    __slots__ = ("_kind", "_params", "_fields", "_pending", "_size", "_parser", "_spool",
                 "_complete", "_failed")  # fmt: skip

    def __init__(self, content_type: str | None, fields: Sequence[str]) -> None:
        self._fields = tuple(fields)
        try:
            self._kind, self._params = _kind(content_type)
        except Exception:
            self._kind, self._params = "", {}
        self._pending: list[bytes] = []
        self._size = 0
        self._parser: NameParser | None = None
        self._spool: IO[bytes] | None = None
        self._complete = False
        self._failed = not self._fields or not self._kind

    @property
    def wanted(self) -> bool:
        """Whether this body can name a user at all (a form or JSON, user fields configured)."""
        return not self._failed

    def feed(self, chunk: bytes, *, more: bool = True) -> None:
        """One chunk of the body as the application received it; ``more=False`` on the last."""
        if self._failed or self._complete:
            return
        self._complete = not more
        try:
            if not chunk:
                return
            if self._spool is not None:
                self._spool.write(chunk)
            elif self._parser is not None:
                self._parser.write(bytes(chunk))
            else:
                self._pending.append(bytes(chunk))
                self._size += len(chunk)
                if self._size > _LAZY_BYTES:
                    self._overflow()
        except Exception:  # a body the framework could not parse either
            self._fail()

    def _overflow(self) -> None:
        """Past :data:`_LAZY_BYTES`: forms are parsed as they stream (python-multipart skips
        what it does not keep at memory speed); JSON goes to an unlinked temporary file and
        is scanned only if its names are asked for (scanning JSON costs more)."""
        if self._kind != "json":
            self._start()
            return
        spool = tempfile.TemporaryFile(prefix="otel-secaudit-")
        pending, self._pending = self._pending, []
        for piece in pending:
            spool.write(piece)
        self._spool = spool

    def names(self) -> tuple[str, ...]:
        """The candidates read so far (all of them once the body is complete)."""
        if self._failed:
            return ()
        try:
            if self._parser is None and self._kind == "json":
                if not self._complete:
                    return ()
                if self._spool is None:  # <= 64 KiB, in memory: json.loads itself decides
                    return names_from_json(json.loads(b"".join(self._pending)), self._fields)
                self._scan_spool()
            if self._parser is None and self._kind == "urlencoded" and self._complete:
                # A whole small form in memory: one pass, no streaming parser to set up.
                found = urlencoded_names(b"".join(self._pending), self._fields)
                if found is not None:
                    return found
            if self._parser is None:
                self._start()
            assert self._parser is not None
            if self._complete:
                self._parser.finish()
            return self._parser.names()
        except Exception:
            self._fail()
            return ()

    def _start(self) -> None:
        picker = Picker(self._fields)
        parser: NameParser
        if self._kind == "urlencoded":
            parser = UrlencodedParser(picker)
        elif self._kind == "multipart":
            parser = MultipartParser(picker, self._params)
        else:
            parser = JsonParser(picker)
        self._parser = parser
        pending, self._pending = self._pending, []
        for chunk in pending:
            parser.write(chunk)

    def _scan_spool(self) -> None:
        spool, self._spool = self._spool, None
        assert spool is not None
        try:
            self._start()
            assert self._parser is not None
            spool.seek(0)
            while block := spool.read(_LAZY_BYTES):
                self._parser.write(block)
        finally:
            spool.close()

    def _fail(self) -> None:
        self._failed = True
        self._parser = None
        self._pending = []
        spool, self._spool = self._spool, None
        if spool is not None:
            spool.close()


#: ``names() -> candidates``: how an adapter lends the exchange its framework's reading.
NameSource = Callable[[], Sequence[str]]
