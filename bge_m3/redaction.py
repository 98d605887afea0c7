"""Masking secrets before text reaches a log line, an error or a page: one module, so that a URL's
password is masked the same way whether it is a Redis URL or a hub mirror's.

``redact_url`` takes one URL it can parse and keeps everything but the password;
``scrub`` takes free text (an HTTP library's error quoting a header or a URL) and masks every
credential it can recognise, including a whole ``user:password@``.
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit

MASK = "***"
"""What a secret is replaced by."""

# redis-py reads a password from the query string as well as from the userinfo. In a parsed
# query the value runs to the next &; in free text it also ends at a space or a quote.
_PASSWORD_QUERY = re.compile(r"(?i)(^|[?&])(password=)[^&]*")
_PASSWORD_IN_TEXT = re.compile(r"(?i)(^|[?&])(password=)[^&\s#'\"]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\"]+")
_USERINFO = re.compile(r"(//)[^/\s]*@")  # to the last @ before the path, as urllib3 splits


def redact_url(url: str) -> str:
    """A URL with its password masked, in the userinfo or a ``password=`` query value, safe for
    logs and /v1/models. The rest, the user name included, is kept as written."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if at and ":" in userinfo:  # edited in place: urlunsplit would drop an empty netloc's //
        url = url.replace(f"//{parts.netloc}", f"//{userinfo.split(':', 1)[0]}:{MASK}@{host}", 1)
    if parts.query:
        url = url.replace(f"?{parts.query}", "?" + _PASSWORD_QUERY.sub(rf"\1\2{MASK}", parts.query), 1)
    return url


def scrub(text: str, token: str | None = None) -> str:
    """``text`` with ``token``, any bearer credential, any URL's ``user:password@`` and any
    ``password=`` query value replaced by ``***``."""
    if token:
        text = text.replace(token, MASK)
    text = _BEARER.sub(rf"\1{MASK}", text)
    text = _USERINFO.sub(rf"\1{MASK}@", text)
    return _PASSWORD_IN_TEXT.sub(rf"\1\2{MASK}", text)


def url_has_password(url: str) -> bool:
    """Whether ``url`` carries a password, in its userinfo or its query."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return bool(at and ":" in userinfo) or bool(_PASSWORD_QUERY.search(parts.query))
