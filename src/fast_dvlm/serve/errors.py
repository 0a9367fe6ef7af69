"""Every failure the server reports, as the OpenAI error body clients already parse.

`{"error": {"message", "type", "param", "code"}}` with a 4xx status for anything the client can fix;
FastAPI's own 422 validation body and Starlette's 404/405 are rewritten into the same shape.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import FastDVLMError

log = logging.getLogger("fast_dvlm.serve")

ERROR_TYPES = {
    400: "invalid_request_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}


class APIError(Exception):
    """A request that gets an error response: HTTP status, a message that says what to fix, and
    where (`param`, the request field) and what kind (`code`, machine-readable)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict:
        kind = ERROR_TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def from_validation(exc: RequestValidationError) -> APIError:
    """FastAPI's list of pydantic errors -> one 400 naming the bad field.

    Of a union's errors (one per member type), the deepest is the one that says what is wrong.
    """
    error = max(exc.errors(), key=lambda e: len(e["loc"]))
    if error["type"] == "json_invalid":
        detail = error.get("ctx", {}).get("error", "")
        return APIError(400, f"the request body is not valid JSON: {detail}".rstrip(": "), "invalid_json")
    fields = [str(part) for part in error["loc"][1:] if not union_member(part)]  # loc[0] is "body"
    param = ".".join(fields) or None
    return APIError(400, f"{param or 'request body'}: {error['msg']}", error["type"], param)


def union_member(loc_part: str | int) -> bool:
    """pydantic names the union member in an error's location: `str`, `list[...]`, `constrained-str`."""
    return isinstance(loc_part, str) and (
        loc_part in ("str", "int", "float", "bool") or not loc_part.isidentifier()
    )


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return from_validation(exc).response()

    async def user_error(request: Request, exc: FastDVLMError) -> JSONResponse:
        return APIError(400, str(exc), "invalid_request").response()

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return APIError(exc.status_code, str(exc.detail), code, headers=exc.headers).response()

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return APIError(
            500, "internal server error; the server log has the details", "internal_error"
        ).response()

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(FastDVLMError, user_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
