"""JSON bodies only, and only a JSON object at the top level."""
import json

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class StrictJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read() if stream is not None else b""
        try:
            data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except UnicodeDecodeError:
            raise ParseError("The body is not valid UTF-8.") from None
        except (ValueError, RecursionError) as exc:
            raise ParseError(f"Malformed JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ParseError(f"The body must be a JSON object, not {type(data).__name__}.")
        return data


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")
