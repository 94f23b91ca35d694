"""The submitted user names of a body, read as the framework reads them
(otel_secaudit/web/user_names.py): the streaming reader agrees with Starlette's own form parsers
and with ``json.loads`` on every body, however it is cut into chunks, never raises, and keeps no
more than the user fields whatever the body's size."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_secaudit.web.json_names import JsonParser
from otel_secaudit.web.name_parsers import Picker, UrlencodedParser, urlencoded_names
from otel_secaudit.web.user_names import (
    MAX_NAME_CHARS,
    BodyNames,
    candidates,
    names_from_form,
    names_from_json,
    names_from_json_bytes,
)

FIELDS = ("username", "email", "login")
FORM = "application/x-www-form-urlencoded"
BOUNDARY = "b0undary-7f3"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def read(content_type: str | None, body: bytes, cuts: tuple[int, ...] = ()) -> tuple[str, ...]:
    reader = BodyNames(content_type, FIELDS)
    points = sorted({0, *(cut % (len(body) + 1) for cut in cuts), len(body)})
    pieces = [body[a:b] for a, b in zip(points, points[1:], strict=False)] or [b""]
    for number, piece in enumerate(pieces):
        reader.feed(piece, more=number < len(pieces) - 1)
    return reader.names()


def stream_json(body: bytes, cuts: tuple[int, ...] = ()) -> tuple[str, ...]:
    """The streaming JSON scanner alone (BodyNames uses it past 64 KiB)."""
    parser = JsonParser(Picker(FIELDS))
    points = sorted({0, *(cut % (len(body) + 1) for cut in cuts), len(body)})
    try:
        for a, b in zip(points, points[1:], strict=False):
            parser.write(body[a:b])
        parser.finish()
    except (ValueError, RecursionError):
        return ()  # BodyNames turns these into "no names"
    return parser.names()


def starlette_names(content_type: str, body: bytes) -> tuple[str, ...]:
    """What a Starlette/FastAPI view's ``(await request.form()).get(field)`` gives."""
    from starlette.requests import Request

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(b"content-type", content_type.encode("latin-1"))],
    }

    async def parse() -> tuple[str, ...]:
        try:
            form = await Request(scope, receive).form()
        except Exception:
            return ()
        return names_from_form(form, FIELDS)

    return asyncio.run(parse())


def json_names(body: bytes) -> tuple[str, ...]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return ()
    return names_from_json(document, FIELDS)


def part(name: bytes, value: bytes, extra: bytes = b"") -> bytes:
    return (
        b"--" + BOUNDARY.encode() + b"\r\n"
        b"Content-Disposition: form-data; " + extra + b'name="' + name + b'"\r\n\r\n'
        + value + b"\r\n"
    )  # fmt: skip


def multipart(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--" + BOUNDARY.encode() + b"--\r\n"


# -- the duplicate-field class ------------------------------------------------------------------

DIFFERENTIALS = [
    (FORM, b"username=decoy&password=x&username=target"),
    (FORM, b"username=decoy&username=target&email="),
    (FORM, b"username=%C3%A9ve&username=t%E9rget"),  # a non-UTF-8 escape: replaced, as Starlette
    (FORM, b"username=\xe9ve+x"),  # a raw non-UTF-8 byte: latin-1, as Starlette
    (MULTIPART, multipart(part(b"username", b"decoy"), part(b"username", b"target"))),
    (MULTIPART, multipart(part(b"note", b"decoy", b'x-name="username"; '), part(b"x", b"y"))),
    (MULTIPART, multipart(part(b"username", b"decoy"), part(b"username", b"t", b'filename="a"; '))),
    (MULTIPART + "; charset=latin-1", multipart(part(b"username", b"\xe9ve"))),
    (MULTIPART, multipart(part(b"username", b"\xe9ve"))),  # not UTF-8: latin-1, as Starlette
    (MULTIPART, multipart(part(b"username", b"target"), part(b"email", b"decoy@example.com"))),
]


@pytest.mark.parametrize(("content_type", "body"), DIFFERENTIALS)
def test_forms_are_read_as_starlette_reads_them(content_type: str, body: bytes) -> None:
    expected = starlette_names(content_type, body)
    assert read(content_type, body) == expected
    assert read(content_type, body, tuple(range(1, len(body), 3))) == expected  # tiny chunks


def test_the_last_duplicate_wins_and_every_user_field_is_a_candidate() -> None:
    assert read(FORM, b"username=decoy&username=target") == ("target",)
    body = json.dumps({"username": "decoy", "email": "target@example.com"}).encode()
    assert read("application/json", body) == ("decoy", "target@example.com")
    assert read("application/json", b'{"username": "decoy", "username": "target"}') == ("target",)
    # one name in two fields, or differing in case only, is one candidate
    assert read(FORM, b"username=Alice&email=alice") == ("Alice",)
    assert candidates(["bob", 42, True, None, " ", {"x": 1}, "x" * (MAX_NAME_CHARS + 1)]) == (
        "bob",
        "42",
    )


@pytest.mark.parametrize(
    "body",
    [
        b'{"username": "decoy", "username": {"id": "target"}}',  # the app gets an object
        b'{"username": "decoy", "username": "' + b"a" * (MAX_NAME_CHARS * 13) + b'"}',
        b'{"username": "decoy", "username": ' + b"7" * (MAX_NAME_CHARS + 100) + b"}",
    ],
)
def test_a_last_value_that_is_no_name_hides_the_earlier_one(body: bytes) -> None:
    assert read("application/json", body) == ()
    assert stream_json(body, (20,)) == ()


@pytest.mark.parametrize(
    "body",
    [
        b'{"username": "bob"',  # truncated
        b'{"username": "bob",}',
        b'{"username": "bob"} x',
        b'["username", "bob"]',
        b'{"username": "b\x01ob"}',  # a raw control character
        b'{"username": "b\xffob"}',  # not UTF-8
        b'{"username": 1 "x"}',
        b"[" * 5000 + b"]" * 5000,
    ],
)
def test_json_documents_json_loads_refuses_name_no_user(body: bytes) -> None:
    assert json_names(body) == ()
    assert read("application/json", body) == ()
    assert stream_json(body, (3, 9)) == ()


def test_below_the_top_level_the_stream_checks_brackets_and_strings_only() -> None:
    """The documented leniency of JSON bodies over 64 KiB: json.loads refuses these, the
    scanner reads their top-level names (the application refused the body: nobody was
    authenticated)."""
    assert stream_json(b'{"username": "u", "x": [1,,2]}') == ("u",)
    assert stream_json(b'{"username": "u", "x": [1, 2}') == ()  # brackets are matched
    assert stream_json(b'{"username": "u", "x": ["\\q"]}') == ()  # strings are checked


def test_json_encodings_are_detected_as_json_loads_detects_them() -> None:
    document = {"email": "zoë@example.com", "username": "zoë"}
    for encoding in ("utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32-be"):
        body = json.dumps(document, ensure_ascii=False).encode(encoding)
        assert read("application/json", body) == json_names(body) == ("zoë", "zoë@example.com")
        assert stream_json(body, (1, 2, 5)) == ("zoë", "zoë@example.com")
    assert names_from_json_bytes(b'{"login": 7}', FIELDS) == ("7",)


def test_bodies_larger_than_64_kib_and_in_many_chunks_are_read() -> None:
    padding = b"x" * 300_000
    form = b"note=" + padding + b"&username=decoy&username=target"
    assert read(FORM, form, tuple(range(0, len(form), 4096))) == ("target",)
    document = b'{"note": "' + padding + b'", "items": [{"username": "nested"}], "username": "t"}'
    assert read("application/json", document, (70_000, 70_001, 200_000)) == ("t",)
    big = multipart(part(b"note", padding), part(b"username", b"target"))
    assert read(MULTIPART, big, tuple(range(0, len(big), 65_536))) == ("target",)


def test_other_bodies_and_no_fields_name_no_user() -> None:
    assert read("text/plain", b"username=bob") == ()
    assert BodyNames(FORM, ()).names() == ()
    assert read(MULTIPART.split(";")[0], multipart(part(b"username", b"bob"))) == ()  # no boundary
    assert read(None, b'{"username": "bob"}') == ("bob",)  # FastAPI reads a body without type


def test_a_large_json_body_waits_on_disk_and_is_read_only_when_asked(tmp_path: Any) -> None:
    reader = BodyNames("application/json", FIELDS)
    reader.feed(b'{"pad": "')
    tracemalloc.start()
    try:
        for _ in range(160):  # 10 MB
            reader.feed(b"a" * 65_536)
        reader.feed(b'", "username": "late"}', more=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 400_000
    assert reader.names() == ("late",)
    assert reader.names() == ("late",)  # asked twice: read once


def test_memory_stays_bounded_whatever_the_body() -> None:
    chunk = b"username=" + b"a" * 65_536
    reader = BodyNames(FORM, FIELDS)
    reader.feed(chunk)
    tracemalloc.start()
    try:
        for _ in range(200):  # 13 MB of one user field's value
            reader.feed(b"a" * 65_536)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 600_000
    reader.feed(b"", more=False)
    assert reader.names() == ()  # too long to be a name


# -- properties -----------------------------------------------------------------------------------

_names = st.sampled_from([*FIELDS, "password", "note", "user%6Eame", "user+name", "Username"])
_values = st.text(max_size=12) | st.sampled_from(["bob", "Bob ", "%ZZ", "a+b", "%e9", "\u00e9"])


@st.composite
def form_bodies(draw: st.DrawFn) -> bytes:
    pairs = draw(st.lists(st.tuples(_names, _values), max_size=6))
    text = "&".join(f"{name}={value}" for name, value in pairs)
    if draw(st.booleans()):
        return text.encode("utf-8", "surrogatepass")
    return draw(st.binary(max_size=40)) + text.encode("latin-1", "replace")


_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)


@st.composite
def json_bodies(draw: st.DrawFn, nested: bool) -> bytes:
    value = (
        st.recursive(
            _scalars,
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_names, inner, max_size=3),
            max_leaves=6,
        )
        if nested
        else _scalars
    )
    pairs = draw(st.lists(st.tuples(_names, value), max_size=6))
    text = "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}"
    if not nested and draw(st.booleans()):  # damage it (at the top level: no new nesting)
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 2))
        extra = draw(st.sampled_from(['"', ",", ":", "}", "]", "\\", "\x01", " 1", "", "\\u12"]))
        text = text[:at] + extra + text[at + cut :]
    return text.encode("utf-8", "surrogatepass")


_cuts = st.lists(st.integers(0, 400), max_size=5).map(tuple)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=form_bodies(), cuts=_cuts)
def test_property_url_encoded_forms_match_starlette(body: bytes, cuts: tuple[int, ...]) -> None:
    assert read(FORM, body, cuts) == starlette_names(FORM, body)


def _streamed_form(body: bytes) -> tuple[str, ...]:
    parser = UrlencodedParser(Picker(FIELDS))
    parser.write(body)
    parser.finish()
    return parser.names()


_form_bytes = st.lists(
    st.sampled_from([b"username", b"email", b"login", b"=", b"&", b"&&", b";", b"%", b"%41",
                     b"%C3%A9", b"+", b" ", b"\xe9", b"x", b"user%6eame", b"a" * 300]),
    max_size=14,
).map(b"".join)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(body=_form_bytes)
def test_property_one_pass_form_reading_matches_the_streaming_parser(body: bytes) -> None:
    """The one-pass reading of a whole small form (the common login request) gives what
    python-multipart's streaming parser gives, caps included; it declines bodies with ';'."""
    found = urlencoded_names(body, FIELDS)
    if b";" in body:
        assert found is None
    else:
        assert found == _streamed_form(body)
    assert read(FORM, body) == _streamed_form(body)


def test_a_value_over_the_raw_cap_is_no_name_in_one_pass_too() -> None:
    body = b"username=" + b"a" * (12 * 1024 + 1) + b"&email=bob"
    assert urlencoded_names(body, FIELDS) == _streamed_form(body) == ("bob",)
    assert urlencoded_names(b"username=alice;x=y", FIELDS) is None
    assert read(FORM, b"username=alice;x=y") == _streamed_form(b"username=alice;x=y")


@settings(max_examples=400, deadline=None)
@given(body=json_bodies(nested=False), cuts=_cuts)
def test_property_streamed_flat_json_matches_json_loads(body: bytes, cuts: tuple[int, ...]) -> None:
    assert stream_json(body, cuts) == json_names(body) == read("application/json", body, cuts)


@settings(max_examples=300, deadline=None)
@given(body=json_bodies(nested=True), cuts=_cuts)
def test_property_streamed_nested_json_matches_json_loads(
    body: bytes, cuts: tuple[int, ...]
) -> None:
    assert stream_json(body, cuts) == json_names(body)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(st.tuples(_names, st.binary(max_size=10), st.booleans()), max_size=4),
    cuts=_cuts,
)
def test_property_multipart_forms_match_starlette(
    parts: list[tuple[str, bytes, bool]], cuts: tuple[int, ...]
) -> None:
    body = multipart(
        *(
            part(name.encode(), value.replace(b"\r", b""), b'filename="f"; ' if file else b"")
            for name, value, file in parts
        )
    )
    assert read(MULTIPART, body, cuts) == starlette_names(MULTIPART, body)


@settings(max_examples=300, deadline=None)
@given(
    content_type=st.sampled_from([FORM, MULTIPART, "application/json", None, "text/x"]),
    body=st.binary(max_size=300),
    cuts=_cuts,
)
def test_property_any_body_never_raises(
    content_type: str | None, body: bytes, cuts: tuple[int, ...]
) -> None:
    names = read(content_type, body, cuts)
    assert isinstance(names, tuple) and all(isinstance(name, str) for name in names)
    streamed = BodyNames(content_type, FIELDS)
    streamed.feed(b" " * 70_000)  # past 64 KiB: the streaming parsers
    streamed.feed(body, more=False)
    assert isinstance(streamed.names(), tuple)


# -- a plain WSGI application: the names come from the wsgi.input it reads ----------------------


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
def test_plain_wsgi_reads_names_from_the_input_the_app_reads(make_sdk: Any, length: bool) -> None:
    import io

    from otel_secaudit.redaction import hash_identity
    from otel_secaudit.web.wsgi import SecAuditWSGIMiddleware

    sdk = make_sdk(login_routes="POST /login")
    seen: list[bytes] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        stream = environ["wsgi.input"]
        while piece := stream.read(5):  # the app reads in small pieces
            seen.append(piece)
        start_response("401 Unauthorized", [("content-type", "text/plain")])
        return [b"no"]

    body = b"username=decoy&username=target&password=hunter2-SECRET"
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/login",
        "REMOTE_ADDR": "192.0.2.1",
        "CONTENT_TYPE": FORM,
        "wsgi.input": io.BytesIO(body),
    }
    if length:
        environ["CONTENT_LENGTH"] = str(len(body))
    list(SecAuditWSGIMiddleware(app)(environ, lambda *args: None))
    assert b"".join(seen) == body  # the application got every byte
    (record,) = [log.log_record for log in sdk.logs()]
    assert record.event_name == "auth.login.failed"
    key = sdk.settings.effective_hash_key
    assert record.attributes["user.hash"] == hash_identity(key, "target")
    assert "hunter2-SECRET" not in repr(dict(record.attributes))


# -- Flask: who the user is without Flask-Login ---------------------------------------------------


class _Account:
    def __init__(self, account_id: int) -> None:
        self.id = account_id


@pytest.mark.parametrize(
    ("g_user", "session_id", "expected"),
    [
        ({"id": "7", "username": "bob"}, None, "7"),  # a database row (Flask's tutorial)
        (_Account(8), None, "8"),  # an object with an id
        (None, "9", "9"),  # session["user_id"] only
        (None, None, None),  # nobody signed in
    ],
)
def test_flask_user_id_without_flask_login(
    make_sdk: Any, g_user: Any, session_id: str | None, expected: str | None
) -> None:
    pytest.importorskip("flask_login")  # importable, as the [flask] extra installs it
    from flask import Flask, abort, g, session

    from otel_secaudit.web import flask as flask_adapter

    sdk = make_sdk()
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "test-only-user-id-secret-0123456789"

    @app.get("/admin")
    def admin() -> Any:
        if session_id is not None:
            session["user_id"] = session_id
        if g_user is not None:
            g.user = g_user
        abort(403)

    flask_adapter.uninstrument_flask()  # whatever an earlier test left instrumented
    flask_adapter.instrument_flask()
    try:
        assert app.test_client().get("/admin").status_code == 403
    finally:
        flask_adapter.uninstrument_flask()
    (record,) = [log.log_record for log in sdk.logs()]
    assert record.event_name == "authz.permission_denied"
    assert record.attributes.get("user.id") == expected
