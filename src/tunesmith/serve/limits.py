"""Request-body size limits, enforced while the body streams in.

Starlette reads a whole multipart body (spooling it to disk) before a route runs, so a limit
checked in the route applies only once every byte has arrived. `BodyLimit` sits in front of
the app as plain ASGI middleware: it refuses a request whose Content-Length is over the
route's limit before reading any of the body, and counts the bytes of a chunked body as
`receive()` delivers them, answering 413 as soon as the count passes the limit; the rest of
the body is never read (the server then closes the connection).
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MB = 1024 * 1024
# Multipart framing around the uploaded file (boundaries, part headers, the purpose field) is a
# few hundred bytes; 64 KiB leaves room for long filenames and extra fields. The route still
# checks the file's own size exactly.
MULTIPART_ALLOWANCE = 64 * 1024
UPLOAD_ROUTE = ("POST", "/v1/files")


class BodyTooLarge(Exception):
    """Raised inside the app's `receive()` once the body passes its limit, to stop the reading."""


def body_limit(scope: Scope, settings) -> tuple[int, dict]:
    """The largest body this request may send, and the OpenAI error object refusing a larger one."""
    if (scope["method"], scope["path"].rstrip("/")) == UPLOAD_ROUTE:
        mb = settings.max_upload_mb
        message = (f"The upload is larger than the server's limit of {mb:g} MB; upload a smaller file, or have the "
                   "operator raise the limit with `tunesmith serve --max-upload-mb`.")
        return int(mb * MB) + MULTIPART_ALLOWANCE, _error(message, "file", "file_too_large")
    # Every Settings field can be set in the server's config file, this one included.
    mb = settings.max_body_mb
    message = (f"The request body is larger than the server's limit of {mb:g} MB; send a smaller request, or have "
               "the operator raise `max_body_mb` in the `tunesmith serve --config` file.")
    return int(mb * MB), _error(message, None, "request_too_large")


def _error(message: str, param: str | None, code: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


async def refuse(send: Send, error: dict) -> None:
    """Answer 413 with `error`, and ask the client to close the connection (the unread rest
    of its body may still be on the way)."""
    body = json.dumps(error).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server refuses a malformed length itself
    return None


class BodyLimit:
    """ASGI middleware: 413 for a body over its route's limit (see `body_limit`), before the
    app has read more than the limit. Limits are read from `settings` on each request."""

    def __init__(self, app: ASGIApp, settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, error = body_limit(scope, self.settings)
        length = _content_length(scope)
        if length is not None and length > limit:
            return await refuse(send, error)  # before reading a byte of the body

        received = 0
        over = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:
                return  # the app's own answer to the aborted read (often a 400); ours goes out instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            pass
        if over and not started:
            await refuse(send, error)
