"""The service's error answers: `Problem` (an HTTP status and a one-line message), the JSON body every error
has (`{"error": {"status": N, "message": "..."}}`), with no path of this machine in it, and the app's
exception handlers, which turn every failure into that body."""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cnnkit.errors import error_line


class Problem(Exception):
    """An HTTP error answer: status and one-line message (and extra headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# an absolute path of two or more parts (POSIX or Windows), not inside a URL or a media type: its folders
_FOLDERS = re.compile(r"(?<![\w.:/\\])(?:[A-Za-z]:)?[/\\](?:[^\s'\"/\\:;,()]+[/\\])+(?=[^\s'\"/\\:;,()])")


def without_paths(message: str) -> str:
    """`message` with every absolute path cut to its file name: answers never show this machine's folders."""
    return _FOLDERS.sub("", message)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error answer, its message without this machine's folders."""
    return JSONResponse({"error": {"status": status, "message": without_paths(message)}}, status, headers=headers)


async def on_problem(_request: Request, p: Problem) -> JSONResponse:
    return error_response(p.status, p.message, p.headers)


async def on_http(_request: Request, e: StarletteHTTPException) -> JSONResponse:
    message = {404: "no such route; see /openapi.json", 405: "method not allowed on this route"}.get(
        e.status_code, str(e.detail))
    return error_response(e.status_code, message)


async def on_validation(_request: Request, e: RequestValidationError) -> JSONResponse:
    first = e.errors()[0] if e.errors() else {}
    where = ".".join(str(x) for x in first.get("loc", ()))
    return error_response(422, f"{where}: {first.get('msg', 'invalid request')}")


async def on_unexpected(_request: Request, e: Exception) -> JSONResponse:
    """A bug of ours: say so, keep serving."""
    return error_response(500, f"internal error ({type(e).__name__}: {error_line(e)})")


def add_error_handlers(app: FastAPI) -> None:
    """Every error the app can meet answered in the service's JSON error format."""
    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_unexpected)
