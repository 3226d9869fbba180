"""The JSON parser every DRF view uses: bounded nesting, no NUL in strings.

Python's decoder recurses once per nesting level: a body of `[` x 100000 raised
RecursionError, which no handler maps (a 500), and a body just under the
interpreter's limit could still exhaust it in the serializers that walk the
data. NUL is refused because PostgreSQL cannot store it in a text column: a
`model` or `user` carrying one failed the usage record's insert.
"""

from __future__ import annotations

from rest_framework import parsers
from rest_framework.exceptions import ParseError

MAX_DEPTH = 64


def check_json_value(value: object, *, max_depth: int = MAX_DEPTH) -> None:
    """Raise ParseError when `value` nests deeper than `max_depth` or holds a NUL."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise ParseError("Strings in the body may not contain NUL (\\u0000).")
        elif isinstance(item, dict | list):
            if depth > max_depth:
                raise ParseError(f"The body nests deeper than {max_depth} levels.")
            children = item.items() if isinstance(item, dict) else ((None, v) for v in item)
            for key, child in children:
                if isinstance(key, str) and "\x00" in key:
                    raise ParseError("Strings in the body may not contain NUL (\\u0000).")
                if isinstance(child, str | dict | list):
                    stack.append((child, depth + 1))


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(f"The body nests deeper than {MAX_DEPTH} levels.") from None
        check_json_value(data)
        return data
