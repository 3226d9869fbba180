"""Bounds on a GBNF grammar, checked before llama.cpp's parser sees it.

llama.cpp parses a grammar recursively (one level per nested group) and expands
`{m,n}` repetition into copies: a deep or highly repeated grammar overflows the
engine thread's stack and kills the process. Pure Python over regular
expressions, so that it is cheap enough for the caller's thread.
"""

from __future__ import annotations

import re

from inference.engine.errors import GrammarError

MAX_GRAMMAR_BYTES = 256 * 1024
MAX_GROUP_DEPTH = 1024
MAX_REPEAT = 256

# A literal, a character class or a comment (all skipped), or a token that counts.
_TOKENS = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|#[^\n]*|[()]|\{[^}]*\}?')
_REPEAT = re.compile(r"\{\s*(\d+)?\s*(?:,\s*(\d+)?\s*)?\}")


def check_grammar(grammar: str) -> None:
    """Raise GrammarError unless `grammar` is within the engine's bounds."""
    if len(grammar) > MAX_GRAMMAR_BYTES or len(grammar.encode("utf-8")) > MAX_GRAMMAR_BYTES:
        raise GrammarError(f"the grammar is longer than {MAX_GRAMMAR_BYTES} bytes")
    depth = 0
    for match in _TOKENS.finditer(grammar):
        token = match.group()
        if token == "(":
            depth += 1
            if depth > MAX_GROUP_DEPTH:
                raise GrammarError(f"the grammar nests groups deeper than {MAX_GROUP_DEPTH}")
        elif token == ")":
            depth -= 1
        elif token[0] == "{":
            repeat = _REPEAT.fullmatch(token)
            if repeat is None:
                raise GrammarError(f"malformed repetition {token[:20]!r} in the grammar")
            if any(n and (len(n) > 6 or int(n) > MAX_REPEAT) for n in repeat.groups()):
                raise GrammarError(f"the grammar repeats an item more than {MAX_REPEAT} times")
