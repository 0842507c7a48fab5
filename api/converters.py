"""URL ids are positive 64-bit integers; anything else is a 404 before it reaches the database."""
from api.routing.ids import MAX_ID


class Int64Converter:
    regex = "[0-9]{1,19}"

    def to_python(self, value):
        number = int(value)
        if number > MAX_ID:
            raise ValueError("beyond 64 bits")
        return number

    def to_url(self, value):
        return str(value)
