"""Errors as OpenAI's API reports them: `{"error": {"message", "type", "param", "code"}}` with an HTTP status.

Clients (the `openai` package among them) raise by status and show `message`, so each message names
the field at fault the way `error: ...` lines name a flag.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

# OpenAI's `type` per status: what its clients and SDKs branch on.
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               405: "invalid_request_error", 413: "invalid_request_error", 503: "server_error"}


class APIError(Exception):
    """A request the server refuses (or cannot serve): `status` and the body's fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)
