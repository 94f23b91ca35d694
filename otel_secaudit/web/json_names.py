"""A streaming reader of the user fields of a JSON body, as ``json.loads`` decodes it; see
:mod:`otel_secaudit.web.user_names`."""

from __future__ import annotations

import codecs
import json
import re
import sys
from typing import Final

from .name_parsers import MAX_NAME_CHARS, MAX_RAW, UNUSABLE, NameParser, Picker

__all__ = ["JsonParser"]

#: Deeper documents fail in ``json.loads`` (the recursion limit); so they do here.
MAX_JSON_DEPTH: Final = 1000
_OUTSIDE: Final = re.compile(r'[^"{}\[\]:,]*')
_CONTROL: Final = re.compile(r"[\x00-\x1f]")
#: Inside a nested value, up to the next bracket, string or backslash.
_SKIM: Final = re.compile(r'[^"\\{}\[\]]*')
_CONTROLS: Final = tuple(chr(code) for code in range(32))
_ESCAPES: Final = frozenset('"\\/bfnrtu')
_NUMBER_PIECE: Final = re.compile(r"[0-9eE.+\-]*\s*")
#: Literals up to this long are decoded by json.loads (an integer id longer than
#: MAX_NAME_CHARS digits is no name anyway).
_SHORT_LITERAL: Final = MAX_NAME_CHARS + 16
_CLOSERS: Final = {"{": "}", "[": "]"}


class JsonParser(NameParser):
    """The top-level string and integer members of a JSON object, as ``json.loads`` decodes
    the document: encoding detected like it, the last of duplicate keys, and a document it
    refuses names no user. Streamed: the state is the open containers (at most
    :data:`MAX_JSON_DEPTH`) and one string or literal being read (capped), whatever the body."""

    def __init__(self, picker: Picker) -> None:
        super().__init__(picker)
        self._head = b""
        self._decoder: codecs.IncrementalDecoder | None = None
        self._stack: list[str] = []  # ["o"] once inside the top-level object
        self._skim: list[str] = []  # the open brackets of a nested value
        # value (a value is due), afirst (an array's first value or "]"), key (a key or "}"),
        # next (a key after ","), colon, comma (after a value), literal (in one), done
        self._state = "value"
        self._in_string = False
        self._escape = False
        self._role = ""  # "key", "value" (of the top-level object), or "" (anything else)
        self._capture: list[str] | None = []
        self._captured = 0
        self._key: str | None = None  # the current top-level key, when it is a user field
        self._literal: list[str] = []  # its first characters
        self._literal_size = 0
        self._literal_int = True
        self._bad = False

    def write(self, chunk: bytes) -> None:
        if self._bad:
            return
        if self._decoder is None:
            self._head += chunk
            if len(self._head) < 4:
                return
            self._begin_decoding()
            chunk, self._head = self._head, b""
        assert self._decoder is not None
        self._scan(self._decoder.decode(chunk))

    def _begin_decoding(self) -> None:
        encoding = json.detect_encoding(self._head)
        self._decoder = codecs.getincrementaldecoder(encoding)("surrogatepass")

    def finish(self) -> None:
        if self.finished or self._bad:
            return
        self.finished = True
        if self._decoder is None:
            self._begin_decoding()
            chunk, self._head = self._head, b""
            assert self._decoder is not None
            self._scan(self._decoder.decode(chunk))
        assert self._decoder is not None
        self._scan(self._decoder.decode(b"", True))
        if self._state == "literal" and not self._stack:
            self._bad = True  # a bare literal is no object
        if self._state != "done" or self._in_string:
            self._bad = True

    def names(self) -> tuple[str, ...]:
        if self._bad or self._state != "done":
            return ()
        return self.picker.names()

    # -- strings ----------------------------------------------------------------------------

    def _scan(self, text: str) -> None:
        i, n = 0, len(text)
        while i < n and not self._bad:
            if self._in_string:
                i = self._in_str(text, i, n)
            elif self._skim:
                i = self._skimming(text, i, n)
            else:
                i = self._outside(text, i, n)

    def _keep(self, piece: str) -> None:
        if _has_control(piece):
            self._bad = True  # json.loads refuses raw control characters in strings
        elif self._capture is not None:
            self._captured += len(piece)
            if self._captured > MAX_RAW:
                self._capture = None  # too long to be a name; still checked to its end
            else:
                self._capture.append(piece)

    def _in_str(self, text: str, i: int, n: int) -> int:
        if self._escape:
            self._escape = False
            if text[i] not in _ESCAPES:
                self._bad = True
            self._keep(text[i])
            return i + 1
        # str.find, not a regular expression: a long string costs memory speed
        quote = text.find('"', i)
        end = n if quote < 0 else quote
        backslash = text.find("\\", i, end)
        j = end if backslash < 0 else backslash
        if j > i:
            self._keep(text[i:j])
        if j >= n:
            return n
        if text[j] == "\\":
            self._keep("\\")
            self._escape = True
            return j + 1
        self._in_string = False
        self._end_string()
        return j + 1

    def _open_string(self, role: str) -> None:
        self._in_string = True
        top = len(self._stack) == 1 and self._stack[0] == "o"
        self._role = role if top else ""
        self._capture, self._captured = [], 0

    def _end_string(self) -> None:
        if self._skim:  # a nested string that spanned chunks: checked, nothing else
            self._capture = None
            return
        text: str | None = None
        if self._capture is not None:
            text = json.loads('"' + "".join(self._capture) + '"')  # escapes, as json.loads
        self._capture = None
        if self._state in ("key", "next"):
            if self._role == "key":
                self._key = text if text in self.picker.fields else None
            self._state = "colon"
            return
        if self._role == "value" and self._key is not None:
            self.picker.put(self._key, UNUSABLE if text is None else text)
        self._value_done()

    # -- everything else ----------------------------------------------------------------------

    def _outside(self, text: str, i: int, n: int) -> int:
        j = _OUTSIDE.match(text, i).end()  # type: ignore[union-attr]
        if j > i:
            self._bare(text[i:j])
        if j >= n or self._bad:
            return n
        self._punctuation(text[j])
        return j + 1

    def _bare(self, piece: str) -> None:
        """Whitespace and literals (numbers, true, false, null) between punctuation."""
        if self._state in ("value", "afirst"):
            if not piece.strip():
                return
            self._state = "literal"
            self._literal, self._literal_size, self._literal_int = [], 0, True
        if self._state != "literal":
            self._bad = bool(piece.strip())
            return
        self._literal_size += len(piece)
        if any(mark in piece for mark in ".eE"):
            self._literal_int = False
        if self._literal_size <= _SHORT_LITERAL:
            self._literal.append(piece)
        elif _NUMBER_PIECE.fullmatch(piece) is None:
            self._bad = True  # only a number can be this long

    def _end_literal(self) -> None:
        text = "".join(self._literal).strip()
        size, self._literal, self._literal_size = self._literal_size, [], 0
        value: object = UNUSABLE
        if size <= _SHORT_LITERAL:
            try:
                value = json.loads(text)
            except ValueError:
                self._bad = True
                return
        elif _NUMBER_PIECE.fullmatch(text) is None or (self._literal_int and _too_long(size)):
            self._bad = True  # (a long number is checked by its characters only)
            return
        if self._key is not None and len(self._stack) == 1:
            usable = isinstance(value, int) and not isinstance(value, bool)
            self.picker.put(self._key, value if usable else UNUSABLE)
        self._value_done()

    def _value_done(self) -> None:
        self._state = "comma" if self._stack else "done"

    def _punctuation(self, char: str) -> None:
        if self._state == "literal":
            if char not in ",}]":
                self._bad = True
                return
            self._end_literal()
            if self._bad:
                return
        state = self._state
        if char == '"':
            if state in ("value", "afirst", "key", "next") and self._stack:
                self._open_string("key" if state in ("key", "next") else "value")
            else:
                self._bad = True
        elif char in "{[":
            self._open(char, state)
        elif char in "}]":
            self._close(char, state)
        elif char == ":" and state == "colon":
            self._state = "value"
        elif char == "," and state == "comma":
            self._state = "next" if self._stack[-1] == "o" else "value"
        else:
            self._bad = True

    def _open(self, char: str, state: str) -> None:
        if state not in ("value", "afirst") or (not self._stack and char != "{"):
            self._bad = True  # names come from an object only
            return
        if not self._stack:
            self._stack.append("o")
            self._state = "key"
            return
        if self._key is not None:
            self.picker.put(self._key, UNUSABLE)  # an object or array is no name
        self._skim.append(char)  # a nested value: skimmed to its end

    def _skimming(self, text: str, i: int, n: int) -> int:
        """Inside a nested value nothing is kept: brackets must match and strings be valid
        (commas, colons and literals down there are not checked)."""
        j = _SKIM.match(text, i).end()  # type: ignore[union-attr]
        if j >= n:
            return n
        char = text[j]
        if char in "{[":
            self._skim.append(char)
            self._bad = len(self._skim) + 1 > MAX_JSON_DEPTH
        elif char in "}]":
            opened = self._skim.pop()
            self._bad = _CLOSERS[opened] != char
            if not self._skim:
                self._value_done()
        elif char == '"':  # checked like any string, nothing kept
            self._in_string = True
            self._capture = None
        else:  # a backslash outside a string
            self._bad = True
        return j + 1

    def _close(self, char: str, state: str) -> None:
        kind = "o" if char == "}" else "a"
        allowed = ("key", "comma") if kind == "o" else ("afirst", "comma")
        if not self._stack or self._stack[-1] != kind or state not in allowed:
            self._bad = True
            return
        self._stack.pop()
        self._value_done()


def _has_control(piece: str) -> bool:
    """Whether ``piece`` holds a control character (U+0000-U+001F); one ``in`` per character
    is memory speed on long pieces, a regular expression on short ones."""
    if len(piece) < 256:
        return _CONTROL.search(piece) is not None
    return any(control in piece for control in _CONTROLS)


def _too_long(digits: int) -> bool:
    """``json.loads`` refuses integers longer than Python's integer string limit."""
    limit = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
    return bool(limit) and digits > limit
