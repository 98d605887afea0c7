"""JSON instead of gunicorn's HTML for errors it answers before Flask sees the request.

gunicorn itself rejects an over-long request line (414), too many or too large
headers (431) and unparseable requests (400) with a small HTML page. The API
promises JSON errors everywhere, so its writer is replaced in the gunicorn
master, before the workers fork.
"""
from __future__ import annotations

import json

CODES = {400: "bad_request", 403: "forbidden", 414: "uri_too_long", 417: "expectation_failed",
         431: "headers_too_large", 500: "internal_error", 501: "not_implemented"}
"""gunicorn's error statuses -> our error codes."""


def error_response(status: int, reason: str, message: str) -> bytes:
    # "type" makes the body valid for the OpenAI error shape too (/v1/embeddings).
    body = json.dumps({"error": {"code": CODES.get(status, "http_error"),
                                 "message": message or reason,
                                 "type": "invalid_request_error" if status < 500 else "server_error"}})
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body.encode())}\r\n\r\n")
    return head.encode("latin-1") + body.encode()


def install() -> None:
    from gunicorn import util

    def write_error(sock, status_int, reason, mesg):
        util.write_nonblock(sock, error_response(int(status_int), reason, str(mesg)))

    util.write_error = write_error
