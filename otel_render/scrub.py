"""The one scrubber: every header, query string, URL, exception text and
configuration value that leaves the process (spans, logs, endpoint bodies,
error contexts) passes through here first.

A key is sensitive when it is one of a few exact header names
(``authorization``, ``cookie``, ``set-cookie``, ``proxy-authorization``,
``x-api-key``) or contains one of the fragments in :data:`SENSITIVE_FRAGMENTS`
(after lower-casing and turning ``-`` into ``_``: ``X-CSRF-Token``,
``db_password``, ``apiKey`` all match). Sensitive values become
:data:`REDACTED`; keys are kept so the reader still sees that something was
sent. Free text (exception messages) is scrubbed by pattern: credentials in
URLs, ``key=value`` and ``"key": "value"`` pairs with a sensitive key, bearer
tokens, and SQLAlchemy's ``[parameters: ...]`` block, which can carry any bound
value.

Functions are pure and cached where the same input repeats (header names), so
scrubbing is cheap enough for the request path.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

REDACTED = "[redacted]"

SENSITIVE_EXACT = frozenset({"authorization", "cookie", "set_cookie", "proxy_authorization", "x_api_key"})
SENSITIVE_FRAGMENTS = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "session",
    "csrf",
    "credential",
    "private_key",
)


class Scrubber:
    """Redacts values of sensitive keys; ``extra_fragments`` extends the list."""

    def __init__(self, extra_fragments: Iterable[str] = ()) -> None:
        self.fragments: tuple[str, ...] = ()
        self._compile(extra_fragments)

    def extend(self, fragments: Iterable[str]) -> None:
        """Add key fragments (``OTEL_RENDER_SCRUB_KEYS``) to this scrubber, in place,
        so every module holding it scrubs them from now on."""
        self._compile((*self.fragments, *fragments))

    def _compile(self, extra_fragments: Iterable[str]) -> None:
        fragments = tuple(dict.fromkeys((*SENSITIVE_FRAGMENTS, *(f.lower().replace("-", "_") for f in extra_fragments))))
        self.fragments = fragments
        alternation = "|".join(re.escape(fragment) for fragment in fragments)
        self._fragment_pattern = re.compile(alternation)
        # key=value or key: value in free text, where the key contains a fragment.
        key_fragment = alternation.replace("_", "[_-]?")  # api_key, api-key, apikey
        key = r"[A-Za-z0-9_.\-]*(?:" + key_fragment + r")[A-Za-z0-9_.\-]*"
        self._pair_pattern = re.compile(
            r"(?P<key>\b" + key + r")(?P<sep>\s*[=:]\s*)(?P<quote>[\"']?)(?P<value>[^\s\"'&,;)}\]]+)",
            re.IGNORECASE,
        )
        self._json_pattern = re.compile(
            r"(?P<key>[\"']" + key + r"[\"'])(?P<sep>\s*:\s*)(?P<quote>[\"'])(?P<value>(?:\\.|(?!(?P=quote)).)*)(?P=quote)",
            re.IGNORECASE,
        )
        # Anything the text patterns below could match contains one of these
        # (lower-cased): a few substring tests let the common case, a plain log
        # line, skip the regular expressions.
        triggers = {"://", "[parameters: ", "bearer", "basic", "token"}
        for fragment in fragments:
            triggers.update({fragment, fragment.replace("_", "-"), fragment.replace("_", "")})
        self._triggers = tuple(sorted(triggers))
        self.is_sensitive = functools.lru_cache(maxsize=1024)(self._is_sensitive)

    def _is_sensitive(self, key: str) -> bool:
        normalized = key.strip().lower().replace("-", "_")
        return normalized in SENSITIVE_EXACT or bool(self._fragment_pattern.search(normalized))

    def value(self, key: str, value: Any) -> Any:
        """``value``, or :data:`REDACTED` when ``key`` is sensitive."""
        return REDACTED if self.is_sensitive(key) else value

    def headers(self, items: Iterable[tuple[str, str]] | Mapping[str, str]) -> dict[str, str]:
        """Header name (lower-cased) to scrubbed value; repeated headers are joined with ``, ``."""
        pairs = items.items() if isinstance(items, Mapping) else items
        scrubbed: dict[str, str] = {}
        for name, value in pairs:
            name = name.lower()
            shown = REDACTED if self.is_sensitive(name) else self.text(str(value))
            scrubbed[name] = f"{scrubbed[name]}, {shown}" if name in scrubbed else shown
        return scrubbed

    def query_string(self, query: str) -> str:
        """``a=1&token=x`` -> ``a=1&token=[redacted]``; order and separators kept."""
        if not query:
            return query
        parts = re.split(r"([&;])", query)
        for index in range(0, len(parts), 2):
            key, sep, _ = parts[index].partition("=")
            if sep and self.is_sensitive(unquote_plus(key)):
                parts[index] = f"{key}={REDACTED}"
        return "".join(parts)

    def url(self, url: str) -> str:
        """A URL with its password and sensitive query values redacted."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return self.text(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, has_password, _ = userinfo.partition(":")
            netloc = f"{user}:{REDACTED}@{hostport}" if has_password else f"{userinfo}@{hostport}"
        return urlunsplit((parts.scheme, netloc, parts.path, self.query_string(parts.query), parts.fragment))

    def text(self, text: str) -> str:
        """Free text (an exception message, a log line) with secrets redacted by pattern."""
        if not text:
            return text
        lowered = text.lower()
        if not any(trigger in lowered for trigger in self._triggers):
            return text
        text = _URL_CREDENTIALS.sub(lambda m: f"{m.group('prefix')}{m.group('user')}:{REDACTED}@", text)
        text = _SQL_PARAMETERS.sub(f"[parameters: {REDACTED}]", text)
        text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
        text = self._json_pattern.sub(lambda m: f"{m.group('key')}{m.group('sep')}{m.group('quote')}{REDACTED}{m.group('quote')}", text)
        text = self._pair_pattern.sub(self._redact_pair, text)
        return text

    @staticmethod
    def _redact_pair(match: re.Match[str]) -> str:
        if match.group("value") == REDACTED:
            return match.group(0)
        return f"{match.group('key')}{match.group('sep')}{match.group('quote')}{REDACTED}"

    def mapping(self, data: Any) -> Any:
        """A JSON-like structure with sensitive keys' values redacted, recursively."""
        if isinstance(data, Mapping):
            return {key: REDACTED if self.is_sensitive(str(key)) else self.mapping(value) for key, value in data.items()}
        if isinstance(data, (list, tuple)):
            return [self.mapping(item) for item in data]
        if isinstance(data, str):
            return self.text(data)
        return data


_URL_CREDENTIALS = re.compile(r"(?P<prefix>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@")
_SQL_PARAMETERS = re.compile(r"\[parameters: .*?\](?=\s*(?:\(|$|\n))", re.DOTALL)
_BEARER = re.compile(r"\b(Bearer|Basic|Token)\s+[A-Za-z0-9\-._~+/=]{4,}", re.IGNORECASE)

#: The process-wide scrubber. ``OTEL_RENDER_SCRUB_KEYS`` may extend it (web settings).
default = Scrubber()
