"""Typed API errors and the one renderer that turns any failure into OpenAI's error object.

REST, SSE and WebSocket all render errors through `error_body`.
"""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

logger = logging.getLogger("llmsite.errors")


class APIError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request_error"


class UnsupportedParameter(InvalidRequest):
    code = "unsupported_parameter"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class AuthenticationError(APIError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionError_(APIError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class NotFound(APIError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
        )


class RequestTooLarge(APIError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(APIError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class ServiceUnavailable(APIError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class ModelUnavailable(ServiceUnavailable):
    code = "model_not_ready"


class BackendUnavailable(ServiceUnavailable):
    """A model's backend failed (refused, timed out, errored); the router may fall back."""

    code = "backend_unavailable"


class UpstreamRejected(APIError):
    """A remote backend refused the request itself (its 400): relayed as it said it."""

    type = "invalid_request_error"

    def __init__(self, message: str, *, status: int, param=None, code=None) -> None:
        super().__init__(message, param=param, code=code)
        self.status = status


def error_body(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(exc: APIError) -> JsonResponse:
    response = JsonResponse(exc.body(), status=exc.status)
    for name, value in exc.headers.items():
        response[name] = value
    return response


def _first_validation_error(detail, path: str = "") -> tuple[str | None, str]:
    """Walk DRF's nested ValidationError detail to the first message and its dotted param."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if key == "non_field_errors":
                return _first_validation_error(value, path)
            sub = f"{path}.{key}" if path else str(key)
            return _first_validation_error(value, sub)
    if isinstance(detail, list):
        for index, value in enumerate(detail):
            if isinstance(value, dict | list):
                return _first_validation_error(value, f"{path}[{index}]")
            return (path or None), str(value)
    return (path or None), str(detail)


def to_api_error(exc: Exception) -> APIError | None:
    """Map a framework exception onto an APIError; None for an unexpected failure."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, RequestDataTooBig):
        return RequestTooLarge("The request body is larger than this server accepts.")
    if isinstance(exc, drf_exceptions.ValidationError):
        param, message = _first_validation_error(exc.detail)
        if param and not message.startswith(("`", "'")) and param not in message:
            message = f"Invalid value for '{param}': {message}"
        return InvalidRequest(message, param=param, code="invalid_value")
    if isinstance(exc, drf_exceptions.ParseError):
        return InvalidRequest(
            f"We could not parse the JSON body of your request. {exc.detail}",
            code="invalid_json",
        )
    if isinstance(exc, drf_exceptions.AuthenticationFailed | drf_exceptions.NotAuthenticated):
        detail = exc.detail
        # simplejwt's token errors come as a dict.
        message = (
            str(detail.get("detail", "Invalid or expired token."))
            if isinstance(detail, dict)
            else str(detail)
        )
        if "no_active_account" in str(exc.get_codes()):
            return AuthenticationError(message, code="invalid_credentials")
        return AuthenticationError(message)
    if isinstance(exc, drf_exceptions.PermissionDenied | PermissionDenied):
        return PermissionError_(str(getattr(exc, "detail", "")) or "Permission denied.")
    if isinstance(exc, drf_exceptions.NotFound | Http404):
        return NotFound(str(getattr(exc, "detail", "")) or "Not found.")
    if isinstance(exc, drf_exceptions.MethodNotAllowed):
        err = InvalidRequest(str(exc.detail), code="method_not_allowed")
        err.status = 405
        return err
    if isinstance(exc, drf_exceptions.UnsupportedMediaType):
        err = InvalidRequest(
            "Unsupported Content-Type; send the body as application/json.",
            code="unsupported_media_type",
        )
        err.status = 415
        return err
    if isinstance(exc, drf_exceptions.NotAcceptable):
        err = InvalidRequest(str(exc.detail), code="not_acceptable")
        err.status = 406
        return err
    if isinstance(exc, drf_exceptions.Throttled):
        wait = int(getattr(exc, "wait", None) or 1)
        return RateLimited(str(exc.detail), headers={"Retry-After": str(wait)})
    if isinstance(exc, OperationalError | InterfaceError):
        # The database is down or restarting (soak/pg_fault.py): a retryable 503,
        # not a 500; the pool reconnects on its own once it is back.
        logger.warning("database unavailable: %s", exc)
        return ServiceUnavailable(
            "The service is temporarily unavailable; retry shortly.",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, drf_exceptions.APIException):
        error = APIError(str(exc.detail))
        error.status = exc.status_code
        return error
    return None


def internal_error() -> APIError:
    return APIError("The server had an error while processing your request.", code="internal_error")


def exception_handler(exc: Exception, context: dict) -> Response:
    err = to_api_error(exc)
    if err is None:
        logger.exception("unhandled error in %s", context.get("view").__class__.__name__)
        err = internal_error()
    headers = dict(err.headers)
    if err.status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="api"')
    return Response(err.body(), status=err.status, headers=headers)
