"""Streaming user-field parsers of request bodies (url-encoded and multipart forms, as
Starlette parses them), and the candidates they yield; :mod:`otel_secaudit.web.user_names` is
the public side. Each parser keeps only the values of the user fields, capped."""

from __future__ import annotations

import codecs
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import unquote_plus

__all__ = [
    "MAX_NAME_CHARS",
    "UNUSABLE",
    "MultipartParser",
    "NameParser",
    "Picker",
    "UrlencodedParser",
    "candidates",
    "urlencoded_names",
]

#: A user-field value longer than this (in characters) is no user name.
MAX_NAME_CHARS: Final = 1024
#: Raw size of one captured value: percent-encoding, JSON escapes and UTF-8 make the raw form
#: of MAX_NAME_CHARS characters up to 12 times as long.
MAX_RAW: Final = MAX_NAME_CHARS * 12
_MAX_KEY_RAW: Final = 256


class _Unusable:
    """A user field that is present but holds no user name (too long, not a string)."""

    def __repr__(self) -> str:
        return "UNUSABLE"


UNUSABLE: Final = _Unusable()


def _normal(name: str) -> str:
    # The identity user.hash is computed over (NFKC, trimmed, case-folded): two fields that
    # differ only in case are one candidate.
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).strip().casefold())


def candidates(values: Sequence[object]) -> tuple[str, ...]:
    """The distinct user names among ``values`` (one per user field, in field order): strings
    that are not blank, integers as text; anything else is no name."""
    found: list[str] = []
    seen: set[str] = set()
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_CHARS:
            continue
        key = _normal(value)
        if key not in seen:
            seen.add(key)
            found.append(value)
    return tuple(found)


class Picker:
    """The values of the wanted fields, the last of duplicates (Starlette's forms and
    ``json.loads``)."""

    __slots__ = ("fields", "values")

    def __init__(self, fields: Sequence[str]) -> None:
        self.fields = tuple(fields)
        self.values: dict[str, object] = {}

    def put(self, name: str, value: object) -> None:
        if name in self.fields:
            self.values[name] = value

    def names(self) -> tuple[str, ...]:
        return candidates([self.values.get(name) for name in self.fields])


class NameParser:
    """One streaming parser: ``write`` chunks, ``finish`` once, ``names`` any time."""

    def __init__(self, picker: Picker) -> None:
        self.picker = picker
        self.finished = False

    def write(self, chunk: bytes) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        self.finished = True

    def names(self) -> tuple[str, ...]:
        return self.picker.names()


class _Capture:
    """Bytes of one value, capped: past :data:`MAX_RAW` it is :data:`UNUSABLE`."""

    __slots__ = ("data", "over")

    def __init__(self) -> None:
        self.data = bytearray()
        self.over = False

    def add(self, data: bytes | bytearray, limit: int = MAX_RAW) -> None:
        if not self.over:
            if len(self.data) + len(data) > limit:
                self.over = True
                self.data = bytearray()
            else:
                self.data += data


class UrlencodedParser(NameParser):
    """``application/x-www-form-urlencoded`` as Starlette's ``FormParser`` decodes it."""

    def __init__(self, picker: Picker) -> None:
        super().__init__(picker)
        from python_multipart import QuerystringParser

        self._name = _Capture()
        self._value: _Capture | None = None
        self._parser = QuerystringParser(
            {
                "on_field_start": self._start_field,
                "on_field_name": self._field_name,
                "on_field_data": self._field_data,
                "on_field_end": self._end_field,
            }
        )

    def _start_field(self) -> None:
        self._name = _Capture()
        self._value = None

    def _field_name(self, data: bytes, start: int, end: int) -> None:
        self._name.add(data[start:end], _MAX_KEY_RAW)

    def _field_data(self, data: bytes, start: int, end: int) -> None:
        if self._value is None:
            self._value = _Capture()
        self._value.add(data[start:end])

    def _end_field(self) -> None:
        if self._name.over:
            return
        name = unquote_plus(self._name.data.decode("latin-1"))
        if name not in self.picker.fields:
            return
        value = self._value or _Capture()
        if value.over:
            self.picker.put(name, UNUSABLE)
        else:
            self.picker.put(name, unquote_plus(value.data.decode("latin-1")))

    def write(self, chunk: bytes) -> None:
        self._parser.write(chunk)

    def finish(self) -> None:
        if not self.finished:
            self.finished = True
            self._parser.finalize()


def urlencoded_names(body: bytes, fields: Sequence[str]) -> tuple[str, ...] | None:
    """The candidates of a whole ``application/x-www-form-urlencoded`` body, read in one
    pass exactly as :class:`UrlencodedParser` (python-multipart's ``QuerystringParser``, as
    Starlette) reads them: fields split on ``&`` (empty ones skipped), the name up to the first
    ``=``, both ``unquote_plus``-decoded from latin-1, the same caps. None when the body holds
    a ``;`` (left to the streaming parser, whose versions differ on it)."""
    if b";" in body:
        return None
    picker = Picker(fields)
    for pair in body.split(b"&"):
        if not pair:
            continue
        name, _, value = pair.partition(b"=")
        if len(name) > _MAX_KEY_RAW:
            continue
        key = unquote_plus(name.decode("latin-1"))
        if key in picker.fields:
            text = unquote_plus(value.decode("latin-1")) if len(value) <= MAX_RAW else UNUSABLE
            picker.put(key, text)
    return picker.names()


def _safe_decode(data: bytes | bytearray, charset: str) -> str:
    """Starlette's multipart decoding: the charset, else latin-1."""
    try:
        return data.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return data.decode("latin-1")


class MultipartParser(NameParser):
    """``multipart/form-data`` as Starlette's ``MultiPartParser`` reads it: the part's last
    ``Content-Disposition`` header names it (python-multipart's ``parse_options_header``), a
    part with a ``filename`` is a file, not a field."""

    def __init__(self, picker: Picker, params: Mapping[bytes, bytes]) -> None:
        super().__init__(picker)
        from python_multipart import MultipartParser

        charset: Any = params.get(b"charset", "utf-8")
        if isinstance(charset, bytes):
            charset = charset.decode("latin-1")
        try:
            self._charset = codecs.lookup(charset).name
        except LookupError:
            self._charset = "latin-1"
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition: bytes | None = None
        self._field: str | None = None
        self._file = False
        self._value = _Capture()
        self._parser = MultipartParser(
            params[b"boundary"],
            {
                "on_part_begin": self._part_begin,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_header_field": self._header_field,
                "on_header_value": self._header_data,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
            },
        )

    def _part_begin(self) -> None:
        self._disposition = None
        self._field = None
        self._file = False
        self._value = _Capture()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name = bytearray()
        self._header_value = bytearray()

    def _headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise ValueError("a multipart part without a name")  # Starlette refuses the form
        name = _safe_decode(options[b"name"], self._charset)
        self._field = name if name in self.picker.fields else None
        self._file = b"filename" in options

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._field is not None and not self._file:
            self._value.add(data[start:end])

    def _part_end(self) -> None:
        if self._field is not None:
            value = self._value
            usable = not (value.over or self._file)  # a file under a user field is no name
            self.picker.put(
                self._field, _safe_decode(value.data, self._charset) if usable else UNUSABLE
            )

    def write(self, chunk: bytes) -> None:
        self._parser.write(chunk)

    def finish(self) -> None:
        if not self.finished:
            self.finished = True
            self._parser.finalize()
