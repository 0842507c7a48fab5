"""URL ids are non-negative integers. One beyond 64 bits still reaches the view, which answers 404
naming the path parameter (ApiView.initial) before anything reaches the database."""
from api.routing.ids import MAX_ID


class Int64Converter:
    regex = "[0-9]+"

    def to_python(self, value):
        # Past 19 digits it cannot be an id; don't parse arbitrarily long digit strings.
        return int(value) if len(value) <= 19 else MAX_ID + 1

    def to_url(self, value):
        return str(value)
