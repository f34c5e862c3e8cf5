"""`petloc serve`: MLflow's own scoring app, behind a limit on each request's body.

MLflow's scoring server (`mlflow models serve`) reads a request's whole body into memory and
parses it before the model sees a row, and uvicorn, which runs it, has no limit on a body:
one large request could take the server's memory, and a body of deeply nested JSON (or a
POST without Content-Type) ended in an error inside the app: a 500 and a traceback in the log.
So `petloc serve` runs the app MLflow builds (`mlflow.pyfunc.scoring_server.init`) under
uvicorn itself, inside `BoundedRequests`, an ASGI middleware that refuses a body over
PETLOC_MAX_REQUEST_BYTES with 413 (from its Content-Length before reading it, or as soon as a
chunked body passes it) or of too many rows with 413, a body not sent within
PETLOC_REQUEST_SECONDS with 408, JSON that does not parse with 400, and a POST without
Content-Type with 415, each with one log line; it lets PETLOC_MAX_CONCURRENT_REQUESTS requests in
at a time, and takes the server's stack trace out of error answers. MLflow's routes and answers are otherwise unchanged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from petloc.data.images import (
    DEFAULT_MAX_ROWS,
    MAX_ROWS_SETTING,
    max_image_bytes,
    max_image_pixels,
    positive_setting,
)
from petloc.errors import PetlocError
from petloc.quiet import libraries_quiet, started_verbose

MAX_REQUEST_SETTING = "PETLOC_MAX_REQUEST_BYTES"
# A round figure: a body costs MLflow's parsing (JSON, DataFrame, base64 copies) a few times its
# size, so this bounds one request's memory; it holds PETLOC_MAX_ROWS rows of typical photos,
# or two images at PETLOC_MAX_IMAGE_BYTES. A larger batch goes in several requests.
DEFAULT_MAX_REQUEST_BYTES = 64_000_000
# Requests whose bodies are read and answered at once; the others wait their turn, unread. Each
# request is bounded, but many at once would add up; prediction keeps the cores busy with two.
CONCURRENT_SETTING = "PETLOC_MAX_CONCURRENT_REQUESTS"
DEFAULT_CONCURRENT_REQUESTS = 2
# A body must arrive whole within this many seconds: a stalled upload holds a slot only so long.
READ_SECONDS_SETTING = "PETLOC_REQUEST_SECONDS"
DEFAULT_READ_SECONDS = 60
# Rows past PETLOC_MAX_ROWS get an error each; a request of many times more is refused whole,
# before MLflow builds its frame (millions of empty rows cost gigabytes).
ROWS_REFUSED_FACTOR = 16

# uvicorn's own logger: its lines reach the server's log with uvicorn's level and format.
log = logging.getLogger("uvicorn.error")


def max_request_bytes() -> int:
    return positive_setting(MAX_REQUEST_SETTING, DEFAULT_MAX_REQUEST_BYTES)


def max_concurrent_requests() -> int:
    return positive_setting(CONCURRENT_SETTING, DEFAULT_CONCURRENT_REQUESTS)


def max_rows() -> int:
    return positive_setting(MAX_ROWS_SETTING, DEFAULT_MAX_ROWS)


@dataclass(frozen=True)
class RequestLimits:
    body_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    concurrent: int = DEFAULT_CONCURRENT_REQUESTS
    rows: int = DEFAULT_MAX_ROWS * ROWS_REFUSED_FACTOR  # rows refused whole past this
    read_seconds: int = DEFAULT_READ_SECONDS

    @classmethod
    def from_environment(cls) -> RequestLimits:
        return cls(
            max_request_bytes(),
            max_concurrent_requests(),
            max_rows() * ROWS_REFUSED_FACTOR,
            positive_setting(READ_SECONDS_SETTING, DEFAULT_READ_SECONDS),
        )


def check_settings() -> None:
    """Every limit the server reads, so that a mistyped one is one line before it starts."""
    RequestLimits.from_environment()
    max_image_bytes()
    max_image_pixels()


def serve_model(ref: str, host: str, port: int, say: Callable[[str], None] = print) -> NoReturn:
    """Check the settings, the port and `ref`, then replace this process with the scoring server
    of `ref` (a registered model such as petloc@champion, an MLflow URI or a model folder)."""
    from petloc.tracking import store
    from petloc.tracking.server import check_port_free

    check_settings()  # a mistyped limit is one line here, not a traceback in the server
    check_port_free(host, port)  # before the model loads
    tracking_uri = store.configure()
    served = served_model(ref)
    # a registered version: as the user named it
    named = ref if served.startswith("models:/m-") else served
    say(
        f"serving {named} from {store.shown_uri(tracking_uri)} at http://{host}:{port}/invocations  (Ctrl+C to stop)"
    )
    # Without MLFLOW_TRACKING_URI, MLflow looks for the model in ./mlflow.db (and makes one).
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    sys.stdout.flush()
    # The server then owns this process: signals reach it directly, and TensorFlow's memory
    # here is given back.
    os.execve(sys.executable, command(served, host, port), env)


def served_model(ref: str) -> str:
    """A model folder as it is, else the MLflow URI of `ref`; one line when the registry has no such version."""
    from petloc.tracking import registry

    if Path(ref, "MLmodel").is_file():
        return str(Path(ref).resolve())
    uri = registry.model_uri(ref)
    if uri is None:
        raise PetlocError(
            f"{ref}: name a registered model (petloc@champion, petloc/3), an MLflow URI (models:/..., runs:/...) "
            "or a model folder"
        )
    return registry.loadable_uri(uri)


def command(model_uri: str, host: str, port: int) -> list[str]:
    """The server's command line: a fresh Python (none of the caller's TensorFlow memory)."""
    return [sys.executable, "-m", __name__, model_uri, host, str(port)]


def main(model_uri: str, host: str, port: int) -> None:
    import uvicorn
    from mlflow.pyfunc import scoring_server

    limits = RequestLimits.from_environment()
    # as MLflow's own app module loads it
    model = scoring_server.load_model_with_mlflow_config(model_uri)
    # SIGTERM waits this long for requests in flight, then stops the server anyway.
    uvicorn.run(
        BoundedRequests(scoring_server.init(model), limits),
        host=host,
        port=port,
        timeout_graceful_shutdown=10,
    )


class BoundedRequests:
    """An ASGI app that reads each request's body itself, at most `max_bytes` of it, and hands
    `app` the request with that body when it is within the limits (and parses, if it is JSON);
    at most `limits.concurrent` requests at a time, the others waiting with their bodies unread.
    Error answers reach the client without the server's stack trace."""

    def __init__(self, app, limits: RequestLimits = RequestLimits()):
        self.app = app
        self.limits = limits
        self.max_bytes = limits.body_bytes
        self.slots = asyncio.Semaphore(limits.concurrent)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = _WithoutStackTraces(send)
        # health checks (/ping) never wait behind predictions
        if scope["method"] in ("GET", "HEAD"):
            return await self._bounded(scope, receive, send)
        async with self.slots:
            return await self._bounded(scope, receive, send)

    async def _bounded(self, scope, receive, send):
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            return await self._over_limit(scope, send, f"{declared} bytes")
        try:
            async with asyncio.timeout(self.limits.read_seconds):
                body = await _read_body(receive, self.max_bytes)
        except _ClientGone:
            return None
        except TimeoutError:
            return await self._refuse(
                scope,
                send,
                408,
                "REQUEST_TIMEOUT",
                f"the request body did not arrive within {self.limits.read_seconds} s "
                f"({READ_SECONDS_SETTING})",
                close=True,
            )
        if body is None:
            return await self._over_limit(scope, send, "a chunked body")
        if scope["method"] == "POST" and _content_type(scope) is None:
            # MLflow's handler splits the header's value: without one, a 500 and a traceback.
            return await self._refuse(
                scope,
                send,
                415,
                "UNSUPPORTED_MEDIA_TYPE",
                "the request has no Content-Type: send application/json (or text/csv)",
            )
        rows, problem = await asyncio.to_thread(_rows_or_problem, scope, body)
        if problem:
            return await self._refuse(scope, send, 400, "BAD_REQUEST", problem)
        if rows > self.limits.rows:
            return await self._refuse(
                scope,
                send,
                413,
                "RESOURCE_LIMIT_EXCEEDED",
                f"{rows} rows in one request, over {self.limits.rows} ({ROWS_REFUSED_FACTOR} x "
                f"{MAX_ROWS_SETTING}): send fewer rows per request",
            )
        return await self.app(scope, _replay(body, receive), send)

    async def _over_limit(self, scope, send, what: str):
        message = (
            f"request body ({what}) is over the limit of {self.max_bytes} bytes ({MAX_REQUEST_SETTING}): "
            "send fewer rows per request"
        )
        # The rest of the body is never read: the connection closes after the answer.
        return await self._refuse(scope, send, 413, "RESOURCE_LIMIT_EXCEEDED", message, close=True)

    @staticmethod
    async def _refuse(scope, send, status: int, code: str, message: str, close: bool = False):
        """One line in the server's log, and an answer in the shape of MLflow's own errors."""
        log.warning("refused %s %s: %s", scope["method"], scope["path"], message)
        content = json.dumps({"error_code": code, "message": message}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
        ]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})


class _ClientGone(Exception):
    pass


def _content_length(scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:  # the HTTP parser refuses these before the app is called
                return None
    return None


async def _read_body(receive, limit: int) -> bytes | None:
    """The body, or None as soon as it passes `limit` bytes (the rest is left unread)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _content_type(scope) -> str | None:
    value = dict(scope["headers"]).get(b"content-type")
    return None if value is None else value.decode("latin-1")


def _is_json(scope) -> bool:
    """The test MLflow's scoring server makes: the media type before any parameters."""
    return (_content_type(scope) or "").split(";")[0].strip() == "application/json"


def _rows_or_problem(scope, body: bytes) -> tuple[int, str | None]:
    """The rows a request holds, counted before MLflow builds its frame (a CSV's lines, the
    records of MLflow's JSON forms), or why its JSON is not JSON MLflow's parser can read. The
    same parser as MLflow's, so what passes here parses there; a body nested too deeply for
    Python's parser, or a number of more digits than Python converts, raised an error inside
    MLflow's app."""
    if not _is_json(scope):
        return (
            body.count(b"\n") if (_content_type(scope) or "").startswith("text/csv") else 0
        ), None
    try:
        request = json.loads(body)
    except RecursionError:
        return 0, "request body is not valid JSON: nested too deeply"
    except ValueError as err:  # bad syntax or encoding, or a number over Python's digit limit
        return 0, f"request body is not valid JSON: {err}"
    return _json_rows(request), None


def _json_rows(request) -> int:
    if not isinstance(request, dict):
        return 0
    split = request.get("dataframe_split")
    found = [
        request.get("dataframe_records"),
        split.get("data") if isinstance(split, dict) else None,
        request.get("inputs"),
        request.get("instances"),
    ]
    counts = [len(f) for f in found if isinstance(f, list)]
    counts += [
        len(v) for f in found if isinstance(f, dict) for v in f.values() if isinstance(v, list)
    ]
    return max(counts, default=0)


class _WithoutStackTraces:
    """A `send` that passes answers on, but takes the `stack_trace` out of an error answer
    (MLflow's carry the server's code paths) and logs the error in one line instead."""

    def __init__(self, send):
        self.send = send
        self.start = None
        self.body = b""

    async def __call__(self, message):
        if message["type"] == "http.response.start" and message["status"] >= 400:
            self.start = message
            return None
        if self.start is None or message["type"] != "http.response.body":
            return await self.send(message)
        self.body += message.get("body", b"")
        if message.get("more_body", False):
            return None
        body = _without_stack_trace(self.body)
        headers = [
            (k, v) for k, v in self.start.get("headers", []) if k.lower() != b"content-length"
        ]
        await self.send(
            {**self.start, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        )
        return await self.send({"type": "http.response.body", "body": body})


def _without_stack_trace(body: bytes) -> bytes:
    try:
        answer = json.loads(body)
    except ValueError:
        return body
    if not isinstance(answer, dict) or "stack_trace" not in answer:
        return body
    answer.pop("stack_trace")
    log.warning(
        "error answered: %s",
        str(answer.get("message", "")).splitlines()[0][:300] if answer.get("message") else "",
    )
    return json.dumps(answer).encode()


def _replay(body: bytes, receive):
    """A `receive` that gives the body already read, then what the connection sends next."""
    given = False

    async def replay():
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


if __name__ == "__main__":
    # This process loads TensorFlow anew: as quiet as the `petloc serve` that started it.
    libraries_quiet(started_verbose())
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
