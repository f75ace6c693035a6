"""Google's JSON error shape, and the exceptions the handlers raise to produce it.

GCE answers a failed call with::

    {"error": {"code": 404, "message": "...",
               "errors": [{"reason": "notFound", "message": "...", "domain": "global"}]}}

which ``google.api_core`` turns into ``NotFound``, ``Conflict``, ``BadRequest``,
``PreconditionFailed``, ``TooManyRequests``, ``ServiceUnavailable``...
"""

from __future__ import annotations


class ApiError(Exception):
    """A call that fails at once with an HTTP error status."""

    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def body(self) -> dict:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "errors": [{"reason": self.reason, "message": self.message, "domain": "global"}],
            }
        }


class OperationError(Exception):
    """An operation that ends DONE with ``error`` set (GCE's asynchronous failure)."""

    def __init__(self, code: str, message: str, http_status: int = 400):
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status


HTTP_MESSAGES = {
    400: "BAD REQUEST",
    403: "FORBIDDEN",
    404: "NOT FOUND",
    409: "CONFLICT",
    412: "PRECONDITION FAILED",
    429: "TOO MANY REQUESTS",
    500: "INTERNAL SERVER ERROR",
    503: "SERVICE UNAVAILABLE",
}


def not_found(resource_path: str) -> ApiError:
    return ApiError(404, "notFound", f"The resource '{resource_path}' was not found")


def already_exists(resource_path: str) -> ApiError:
    return ApiError(409, "alreadyExists", f"The resource '{resource_path}' already exists")


def invalid(message: str) -> ApiError:
    return ApiError(400, "invalid", message)


def required(field: str) -> ApiError:
    return ApiError(400, "required", f"Required field '{field}' not specified")


def condition_not_met(message: str) -> ApiError:
    return ApiError(412, "conditionNotMet", message)


def in_use(resource_path: str, user: str) -> ApiError:
    return ApiError(
        400,
        "resourceInUseByAnotherResource",
        f"The {resource_path} resource is already being used by '{user}'",
    )


def rate_limited(message: str = "Rate Limit Exceeded") -> ApiError:
    return ApiError(429, "rateLimitExceeded", message)


def backend_error(message: str = "Internal error. Please try again or contact Google Support.") -> ApiError:
    return ApiError(503, "backendError", message)


def not_implemented(method: str) -> ApiError:
    return ApiError(501, "notImplemented", f"{method} is not implemented by the haplane GCE emulator")
