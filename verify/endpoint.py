"""One hub endpoint: file URLs, auth scoping, the metadata HEAD and the body GET.

The protocol is the hub's ``/resolve/`` one: a HEAD (``Accept-Encoding: identity``,
CDN redirect not followed) carries ``X-Repo-Commit``, ``X-Linked-Etag``/``ETag`` and
``X-Linked-Size``/``Content-Length``; the GET may answer with a redirect to a CDN host.
Redirects are followed here, by hand, so the bearer token only ever goes to the
endpoint's own origin.
"""
from __future__ import annotations

import email.utils
import re
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests
from huggingface_hub import constants as hub_constants
from huggingface_hub import hf_hub_url

from bge_m3.redaction import scrub
from verify.errors import EndpointError, TransientError

MAX_REDIRECTS = 5
"""Redirect hops followed for one request (hub rename + CDN is two)."""

CONNECT_TIMEOUT = 10.0
"""Seconds to open a connection before the attempt counts as a connection error."""

READ_TIMEOUT = 60.0
"""Seconds without a byte from the server before the attempt counts as a timeout."""

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class RemoteMeta:
    """What an endpoint says about one file before we fetch it."""

    commit: str | None
    etag: str | None
    size: int | None

    @property
    def lfs_sha256(self) -> str | None:
        """The etag when it is an LFS object id (a sha256); git-blob etags are sha1s and say nothing."""
        return self.etag if self.etag and _SHA256.match(self.etag) else None


def normalize_etag(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"').lower() or None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def status_error(resp: requests.Response, what: str) -> Exception:
    """The error for a non-success status: transient for 5xx/429/408, endpoint-fatal otherwise."""
    code = resp.status_code
    if code >= 500 or code in (408, 429):
        return TransientError(f"{what}: HTTP {code}",
                              retry_after=parse_retry_after(resp.headers.get("Retry-After")))
    hint = " (check HF_TOKEN)" if code in (401, 403) else ""
    return EndpointError(f"{what}: HTTP {code}{hint}")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def same_origin(url: str, other: str) -> bool:
    """Whether two URLs share scheme, host and port; False when either cannot be parsed (a port
    out of range), so a malformed URL is never trusted with the token."""
    try:
        return _origin(url) == _origin(other)
    except ValueError:
        return False


class Endpoint:
    """A hub base URL plus the token that may be sent to it (and only to it)."""

    def __init__(self, base: str, session: requests.Session, token: str | None = None):
        self.base = base.rstrip("/")
        self.session = session
        self.token = token

    def __str__(self) -> str:
        """The base URL for log lines and sidecars, without any user:password in it."""
        return scrub(self.base)

    def file_url(self, repo_id: str, revision: str, path: str) -> str:
        return hf_hub_url(repo_id, path, revision=revision, endpoint=self.base)

    def _headers(self, url: str, extra: dict[str, str]) -> dict[str, str]:
        headers = {"Accept-Encoding": "identity", **extra}
        if self.token and _origin(url) == _origin(self.base):
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _request(self, method: str, url: str, headers: dict[str, str], *,
                 follow: str) -> requests.Response:
        """One request with hand-followed redirects (``follow``: ``all`` or ``relative``)."""
        for _ in range(MAX_REDIRECTS + 1):
            resp = None
            try:
                resp = self._send(method, url, headers)
                location = resp.headers.get("Location")
                if not resp.is_redirect or not location:
                    return resp
                if follow == "relative" and urlsplit(location).netloc:
                    return resp  # the CDN hop: its headers are the metadata we want
                resp.close()
                url = urljoin(url, location)
            except ValueError as exc:  # a bad IPv6 literal, a port out of range: this endpoint only
                if resp is not None:
                    resp.close()
                raise EndpointError(f"{method}: malformed URL or redirect: "
                                    f"{scrub(str(exc), self.token)[:160]}") from None
        raise EndpointError(f"{method}: more than {MAX_REDIRECTS} redirects")

    def _send(self, method: str, url: str, headers: dict[str, str]) -> requests.Response:
        try:
            return self.session.request(method, url, headers=self._headers(url, headers),
                                        allow_redirects=False, stream=True,
                                        timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
        except requests.ConnectTimeout as exc:  # a Timeout too: no answer at all, unreachable
            raise TransientError(f"{method} connect timed out: {_short(exc, self.token)}",
                                 connection=True) from None
        except requests.Timeout as exc:
            raise TransientError(f"{method} timed out: {type(exc).__name__}") from None
        except requests.ConnectionError as exc:
            raise TransientError(f"{method} connection error: {_short(exc, self.token)}",
                                 connection=True) from None
        except requests.RequestException as exc:  # a bad URL or header: try the next endpoint
            raise EndpointError(f"{method} {type(exc).__name__}: {_short(exc, self.token)}") from None

    def head(self, repo_id: str, revision: str, path: str) -> RemoteMeta:
        url = self.file_url(repo_id, revision, path)
        with self._request("HEAD", url, {}, follow="relative") as resp:
            if resp.status_code >= 400:
                raise status_error(resp, "HEAD")
            h = resp.headers
            etag = h.get(hub_constants.HUGGINGFACE_HEADER_X_LINKED_ETAG) or h.get("ETag")
            size = _int_or_none(h.get(hub_constants.HUGGINGFACE_HEADER_X_LINKED_SIZE))
            if size is None and resp.status_code == 200:
                size = _int_or_none(h.get("Content-Length"))
            return RemoteMeta(h.get(hub_constants.HUGGINGFACE_HEADER_X_REPO_COMMIT),
                              normalize_etag(etag), size)

    def get(self, repo_id: str, revision: str, path: str, offset: int) -> requests.Response:
        """The body response (following the CDN redirect), asking for ``offset``-onwards."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        return self._request("GET", self.file_url(repo_id, revision, path), headers, follow="all")


def _short(exc: BaseException, token: str | None = None) -> str:
    text = scrub(str(exc), token)
    for marker in ("Connection refused", "Connection reset", "Remote end closed",
                   "Name or service not known", "timed out"):
        if marker in text:
            return marker
    return text[:160]
