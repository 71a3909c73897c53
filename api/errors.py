"""One shape for every refusal: `{"error": code, "detail": words}` with the HTTP status that fits."""

from django.core.exceptions import PermissionDenied
from django.http import Http404, JsonResponse
from ninja.errors import AuthenticationError, HttpError, ValidationError


class ApiError(Exception):
    def __init__(self, status, code, detail, headers=None, **extra):
        """`extra`: facts a program may act on (the id of the deployment already on its way…), beside the words."""
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers, self.extra = status, code, detail, headers or {}, extra


def not_found(what):
    return ApiError(404, "not_found", f"No {what}.")


def conflict(detail):
    """The request is fine but the state of things refuses it (a closed gate, a finished deployment…)."""
    return ApiError(409, "refused", detail)


def json_error(status, code, detail, **extra):
    """The same shape outside a ninja view (the input guard answers before any view runs)."""
    return JsonResponse({"error": code, "detail": detail, **extra}, status=status)


def install(api):
    """Register the handlers on the NinjaAPI `api`."""

    def respond(request, status, code, detail, headers=None, **extra):
        response = api.create_response(request, {"error": code, "detail": detail, **extra}, status=status)
        for name, value in (headers or {}).items():
            response[name] = value
        return response

    @api.exception_handler(ApiError)
    def api_error(request, exc):
        return respond(request, exc.status, exc.code, exc.detail, exc.headers, **exc.extra)

    @api.exception_handler(AuthenticationError)
    def unauthenticated(request, exc):
        return respond(request, 401, "unauthenticated", "Send a token: 'Authorization: Bearer <token>'.",
                       {"WWW-Authenticate": "Bearer"})

    @api.exception_handler(ValidationError)
    def invalid(request, exc):
        words = "; ".join(f"{'.'.join(str(part) for part in error.get('loc', ()))}: {error.get('msg', '')}"
                          for error in exc.errors)
        return respond(request, 422, "invalid", words or "The request is not valid.")

    @api.exception_handler(Http404)
    def missing(request, exc):
        return respond(request, 404, "not_found", str(exc) or "Not found.")

    @api.exception_handler(PermissionDenied)
    def forbidden(request, exc):
        return respond(request, 403, "forbidden", str(exc) or "Not allowed.")

    @api.exception_handler(HttpError)
    def http_error(request, exc):
        return respond(request, exc.status_code, "error", str(exc))
