"""Replace known secret values with *** in anything that leaves the process."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable

MASK = "***"
MIN_SECRET_LENGTH = 6


class Redactor:
    """A growing set of secret values; `redact` masks every occurrence of any of them."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        wanted = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_LENGTH}
        # Also the form the value takes inside a JSON string, since messages are redacted once encoded.
        fresh = (wanted | {json.dumps(s)[1:-1] for s in wanted}) - self._secrets
        if not fresh:
            return
        with self._lock:
            self._secrets |= fresh
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def redact(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None:
            return text
        return pattern.sub(MASK, text)
