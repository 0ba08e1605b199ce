"""Error responses: the Open Inference Protocol's shape under ``/v2``, OpenAI's everywhere else.

OpenAI: ``{"error": {"message", "type", "param", "code"}}``. KServe v2: ``{"error": "<message>"}``,
which is what v2 clients (tritonclient, kserve) read.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response

from uplion import protocol

_encode = msgspec.json.Encoder().encode


class ApiError(Exception):
    """Raised by handlers; rendered in the API's own error shape."""

    def __init__(self, error: protocol.ErrorInfo, headers: dict[str, str] | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.headers = headers or {}


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(protocol.ErrorInfo(
        message, type="invalid_request_error", param=param, code=code, status=400
    ))


def model_not_found(model: str) -> ApiError:
    return ApiError(protocol.ErrorInfo(
        f"The model `{model}` does not exist or you do not have access to it.",
        type="invalid_request_error", param="model", code="model_not_found", status=404,
    ))


def deadline_exceeded(model: str, timeout_s: float) -> ApiError:
    return ApiError(protocol.ErrorInfo(
        f"The request to `{model}` was not answered within its {timeout_s:g} s deadline: "
        "the model's workers are busy, starting or unavailable. Retry later.",
        type="timeout_error", code="timeout", status=504,
    ))


def too_large(limit: int) -> ApiError:
    return ApiError(protocol.ErrorInfo(
        f"The request body is larger than this endpoint's limit of {limit} bytes.",
        type="invalid_request_error", code="request_too_large", status=413,
    ))


def internal(request_id: str) -> protocol.ErrorInfo:
    return protocol.ErrorInfo(
        f"The gateway failed to answer this request (request id {request_id}); the cause is in "
        "its log under that id.", type="server_error", code="internal_error", status=500,
    )


def respond(
    path: str, error: protocol.ErrorInfo, headers: dict[str, str] | None = None
) -> Response:
    """``error`` in the shape of the API that ``path`` belongs to."""
    if path == "/v2" or path.startswith("/v2/"):
        return v2_response(error, headers)
    return openai_response(error, headers)


def openai_body(error: protocol.ErrorInfo) -> dict[str, Any]:
    return {"error": {"message": error.message, "type": error.type,
                      "param": error.param, "code": error.code}}


def openai_response(error: protocol.ErrorInfo, headers: dict[str, str] | None = None) -> Response:
    return Response(_encode(openai_body(error)), status_code=error.status, headers=headers,
                    media_type="application/json")


def v2_response(error: protocol.ErrorInfo, headers: dict[str, str] | None = None) -> Response:
    return Response(_encode({"error": error.message}), status_code=error.status, headers=headers,
                    media_type="application/json")
