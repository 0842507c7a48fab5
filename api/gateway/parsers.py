"""The one body parser of the JSON API: strict JSON, and only a JSON object at the top level.

The gateway (middleware.py) has already checked the size (413, MAX_BODY_BYTES) and the declared
type (415). What this parser refuses, each a 400 problem+json naming the field, or `(body)`:

- bytes that are not UTF-8 (RFC 8259 section 8.1), a UTF-8 byte order mark included (RFC 8259
  lets a parser refuse it; nothing here sends one);
- anything that is not JSON: trailing data, `NaN`, `Infinity`, a number too large for a double
  (`1e999`, which Python would read as Infinity), an integer of more than 4,300 digits (Python's
  limit on converting one);
- a top-level value that is not an object (an array, a string, a number, null);
- nesting deeper than MAX_DEPTH. No route takes more than two levels (the topology); the limit
  bounds the work a body can make before any view sees it, and a body nested past the
  interpreter's recursion limit (about 1000) is refused the same way, never as a RecursionError;
- a key given twice in one object. Policy: refused, naming the key. RFC 8259 leaves the meaning
  of duplicate names to each implementation (Python keeps the last, others keep the first), so a
  body that one component reads one way and another reads the other way is an ambiguity an
  attacker can use (a proxy that checks `role` in the first copy, an app that stores the second);
- a lone UTF-16 surrogate written as an escape (`"\\ud800"`): it is not a Unicode scalar value,
  so it cannot be stored (PostgreSQL text is UTF-8) nor even rendered back in an error message.

Unknown fields are a serializer matter (api/serializers.py: refused, each named), as are field
lengths and NUL characters.
"""
import itertools
import json
import math
import re

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_DEPTH = 32
# A lone surrogate can only come from an escape: UTF-8 itself cannot encode one (the decoder
# refuses it), so bodies without such an escape skip the search for one.
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
SURROGATE = re.compile("[\ud800-\udfff]")


class BodyError(ParseError):
    """A 400 about the body, naming the field at fault (a dotted path), or `(body)`."""

    def __init__(self, detail: str, field: str = "(body)", kind: str = "malformed-body"):
        super().__init__(detail)
        self.field, self.kind = field, kind


class _Duplicated(dict):
    """An object in which a key was given more than once (a parse-time marker, never returned)."""
    duplicates: list


class StrictJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read() if stream is not None else b""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BodyError(f"The body is not valid UTF-8 (byte {exc.start}).") from None
        duplicated = []

        def make_object(pairs):
            obj = dict(pairs)
            if len(obj) != len(pairs):
                obj = _Duplicated(obj)
                seen, obj.duplicates = set(), []
                for key, _ in pairs:
                    if key in seen:
                        obj.duplicates.append(key)
                    seen.add(key)
                duplicated.append(obj)
            return obj

        try:
            data = json.loads(text, parse_constant=_reject_constant, parse_float=_finite, object_pairs_hook=make_object)
        except RecursionError:
            raise BodyError(TOO_DEEP, kind="body-too-deep") from None
        except ValueError as exc:
            raise BodyError(f"Malformed JSON: {exc}") from None
        if not isinstance(data, dict):
            raise BodyError(f"The body must be a JSON object, not {_json_type(data)}.")
        surrogates = SURROGATE_ESCAPE.search(raw) is not None
        # Most bodies need no walk: too few brackets to nest deeply, no duplicate, no escape. The
        # walk (a Python loop) runs when one of those is found, or to name the too-deep field.
        too_deep = raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and _deepest(raw) > MAX_DEPTH
        if duplicated or surrogates or too_deep:
            _check(data, surrogates=surrogates)
        return data


# A JSON string, in a body already parsed: every string is closed, so this never scans past one.
STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')
NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


def _deepest(raw: bytes) -> int:
    """How deep a parsed body nests: the brackets outside strings, counted in C but for one pass."""
    brackets = STRING.sub(b"", raw).translate(None, NOT_BRACKETS)
    return max(itertools.accumulate(1 if c in b"[{" else -1 for c in brackets), default=0)


TOO_DEEP = f"The JSON nests deeper than {MAX_DEPTH} levels, the most accepted."


def _check(data: dict, *, surrogates: bool) -> None:
    """Depth, duplicate keys and (when the body has an escape that could make one) lone
    surrogates, in one walk without recursion; the first fault found is raised. A path is a
    linked pair (parent's path, key), so a step costs the same at any depth."""
    stack = [(data, None, 1)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BodyError(TOO_DEEP, _top(path), kind="body-too-deep")
        if isinstance(node, _Duplicated):
            key = node.duplicates[0]
            if surrogates and SURROGATE.search(key):
                raise BodyError(LONE_KEY)
            raise BodyError(f"The key {key!r} is given more than once; give each field once.",
                            _name((path, key)), kind="duplicate-field")
        for key, value in node.items() if isinstance(node, dict) else enumerate(node):
            if surrogates:
                if isinstance(key, str) and SURROGATE.search(key):
                    raise BodyError(LONE_KEY)
                if isinstance(value, str) and SURROGATE.search(value):
                    raise BodyError("Holds a lone UTF-16 surrogate escape (\\ud800 to \\udfff not in a pair); "
                                    "it is not Unicode text.", _name((path, key)))
            if isinstance(value, (dict, list)):
                stack.append((value, (path, key), depth + 1))


LONE_KEY = "A key holds a lone UTF-16 surrogate escape; it is not Unicode text."


def _name(path) -> str:
    """A field's dotted name, as the exception handler names nested fields (`a.0.b`)."""
    parts = []
    while path is not None:
        path, key = path
        parts.append(str(key))
    return ".".join(reversed(parts)) or "(body)"


def _top(path) -> str:
    """The top-level field under which a path lies."""
    key = "(body)"
    while path is not None:
        path, key = path
    return str(key)


def _json_type(value) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    """A number too large for a double (`1e999`) would become Infinity, which `_reject_constant`
    refuses when written out."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value
