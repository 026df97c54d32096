"""Query text as it may leave the process: literals replaced by ``?``, comments
removed, plus the operation and table a statement works on.

``db.query.text`` is recorded on spans only through :func:`describe`. The text
SQLAlchemy hands us already has placeholders for bound values (``%(id)s``,
``?``, ``:name``, ``$1``); what can still carry a value is a literal the app
wrote into the SQL itself (``text("... WHERE token = 'abc'")``), a number, or a
comment. Every string literal (standard, ``E''``, ``N''``, ``X''``, dollar
quoted), every number and every comment is replaced, so the text shows the
statement's shape and nothing else.

The result is cached per statement text: SQLAlchemy reuses the same compiled
string for a repeated statement, so the cost after the first time is one dict
lookup. Everything here is pure.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

#: Longest ``db.query.text`` recorded; longer statements are cut (with ``...``).
MAX_QUERY_TEXT = 2048

_TOKENS = re.compile(
    r"""
    (?P<comment>--[^\n]*|/\*.*?(?:\*/|$))
    | (?P<dollar>\$\$.*?(?:\$\$|$)|\$(?P<tag>[A-Za-z_][A-Za-z0-9_]*)\$.*?(?:\$(?P=tag)\$|$))
    | (?P<string>(?:[EeNnXxBbUu]&?)?'(?:[^'\\]|''|\\.)*(?:'|$))
    | (?P<quoted>"(?:[^"]|"")*"|`[^`]*`)
    | (?P<placeholder>%\([^)]*\)s|%s|\?|:[A-Za-z_][A-Za-z0-9_]*|\$\d+)
    | (?P<number>(?<![A-Za-z0-9_$.])(?:0[xX][0-9A-Fa-f]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))
    """,
    re.VERBOSE | re.DOTALL,
)
_SPACES = re.compile(r"\s+")
_FIRST_WORD = re.compile(r"\s*\(*\s*([A-Za-z]+)")
_IDENTIFIER = r'(?:"(?:[^"]|"")+"|`[^`]+`|\[[^\]]+\]|[A-Za-z_][A-Za-z0-9_$]*)'
_QUALIFIED = rf"({_IDENTIFIER}(?:\s*\.\s*{_IDENTIFIER})*)"
_TARGETS = {
    "SELECT": re.compile(rf"\bFROM\s+{_QUALIFIED}", re.IGNORECASE),
    "DELETE": re.compile(rf"\bFROM\s+{_QUALIFIED}", re.IGNORECASE),
    "INSERT": re.compile(rf"\bINTO\s+{_QUALIFIED}", re.IGNORECASE),
    "REPLACE": re.compile(rf"\bINTO\s+{_QUALIFIED}", re.IGNORECASE),
    "UPDATE": re.compile(rf"^\s*UPDATE\s+(?:ONLY\s+)?{_QUALIFIED}", re.IGNORECASE),
}
# A statement reading several tables has no single collection.
_SEVERAL_TABLES = re.compile(r"\bJOIN\b|\bUNION\b|\bINTERSECT\b|\bEXCEPT\b", re.IGNORECASE)
_FROM_LIST = re.compile(rf"\bFROM\s+{_QUALIFIED}(?:\s+(?:AS\s+)?{_IDENTIFIER})?\s*,", re.IGNORECASE)


def sanitize(statement: str) -> str:
    """``statement`` with literals as ``?``, comments removed, whitespace collapsed."""

    def replace(match: re.Match[str]) -> str:
        kind = match.lastgroup
        if kind == "comment":
            return " "
        if kind in ("dollar", "string", "number"):
            return "?"
        return match.group(0)

    text = _SPACES.sub(" ", _TOKENS.sub(replace, statement)).strip()
    if len(text) > MAX_QUERY_TEXT:
        text = text[: MAX_QUERY_TEXT - 3] + "..."
    return text


def _unquote(identifier: str) -> str:
    parts = re.split(r"\s*\.\s*(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", identifier)
    return ".".join(part.strip('"`[]') for part in parts)


@dataclass(frozen=True)
class StatementInfo:
    """What a span and the duration histogram say about one statement."""

    text: str
    operation: str | None
    collection: str | None


@functools.lru_cache(maxsize=1024)
def describe(statement: str) -> StatementInfo:
    """Sanitized text, operation (``SELECT``) and single target table of ``statement``."""
    text = sanitize(statement)
    first = _FIRST_WORD.match(text)
    operation = first.group(1).upper() if first else None
    collection = None
    pattern = _TARGETS.get(operation or "")
    if pattern is not None and not _SEVERAL_TABLES.search(text):
        matches = pattern.findall(text)
        # One FROM/INTO only: a subquery or a comma-separated FROM list is ambiguous.
        if len(matches) == 1 and not (operation == "SELECT" and _FROM_LIST.search(text)):
            collection = _unquote(matches[0])
    return StatementInfo(text=text, operation=operation, collection=collection)
