"""Hide credentials in text that is about to be shown: URLs with passwords, password parameters.

Configuration values come from the environment (``${REDIS_URL}``), and an error message or a log
line that quotes one must not print the password it carries. :func:`redact` is applied to every
configuration error and, by :func:`market_data.logs.setup_logging`, to every log message.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@host -> scheme://user:***@host ; scheme://token@host -> scheme://***@host
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<info>[^\s/?#'\"]+)@")
_PARAM = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pwd|token|secret|api_?key)=)[^&;\s'\"]*", re.IGNORECASE
)


def _userinfo(m: re.Match[str]) -> str:
    user, colon, _ = m.group("info").partition(":")
    return f"{m.group('scheme')}{user}:{MASK}@" if colon else f"{m.group('scheme')}{MASK}@"


def redact(text: str) -> str:
    """``text`` with the password of every URL in it (and ``password=`` values) masked."""
    if "@" not in text and "=" not in text:  # the usual case: nothing to look at
        return text
    return _PARAM.sub(lambda m: m.group("key") + MASK, _USERINFO.sub(_userinfo, text))
