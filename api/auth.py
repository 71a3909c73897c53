"""Who is calling, and may they: one check for every endpoint.

`TokenAuth` reads `Authorization: Bearer <token>`, finds the token by its hash, refuses a revoked or expired
one (401), applies the rate limit of the token (429 with Retry-After), then the endpoint's rule from
api/permissions.py (403 without the scope or the owner's permission; 403 for an endpoint without a rule)."""

import functools
import logging
import time

import django_rq
from django.conf import settings
from ninja.security import HttpBearer
from redis.exceptions import RedisError

from api.errors import ApiError
from api.models import ApiToken, hash_token
from api.permissions import rule_for
from pipelines.models.audit import act_via

logger = logging.getLogger(__name__)
RATE_WINDOW_SECONDS = 60


def _unauthenticated(detail):
    return ApiError(401, "unauthenticated", detail, {"WWW-Authenticate": "Bearer"})


def token_from(request):
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


class TokenAuth(HttpBearer):
    """A ninja auth callable: returns the ApiToken (request.auth), or raises ApiError. (HttpBearer only for the
    schema's security scheme: the whole check is here.)"""

    def __call__(self, request):
        match = request.resolver_match
        rule = rule_for(match.url_name if match else None, request.method)
        if rule is None:
            raise ApiError(403, "no_rule", "This endpoint has no permission rule, so nobody may call it.")
        plaintext = token_from(request)
        if plaintext is None:
            raise _unauthenticated("Send a token: 'Authorization: Bearer <token>'.")
        token = ApiToken.objects.select_related("user").filter(token_hash=hash_token(plaintext)).first()
        if token is None:
            raise _unauthenticated("This token is not known.")
        if refusal := token.refusal():
            raise _unauthenticated(refusal)
        check_rate(token)
        token.touch()
        if rule.scope is not None and not token.has_scope(rule.scope):
            raise ApiError(403, "missing_scope", f"The token {token.name!r} lacks the scope {rule.scope!r}.")
        if rule.permission and not token.user.has_perm(rule.permission):
            raise ApiError(403, "missing_permission", f"{token.user.get_username()} does not have the permission {rule.permission!r}.")
        request.user = token.user
        act_via(token.via)
        return token

    def authenticate(self, request, token):  # HttpBearer's hook; __call__ above does all of it
        raise NotImplementedError


@functools.cache
def _rate_connection():
    """One Redis client (and its connection pool) per process: django_rq makes a new client per call, which
    would connect anew on every request."""
    return django_rq.get_connection("git")


def check_rate(token):
    """At most GITOPS_API_RATE_LIMIT requests per token per minute, counted in Redis; fails open when Redis
    is away (the queue being down must not also lock CI out of reading)."""
    limit = settings.GITOPS_API_RATE_LIMIT
    if not limit:
        return
    now = time.time()
    window = int(now // RATE_WINDOW_SECONDS)
    key = f"gitops:api-rate:{token.pk}:{window}"
    try:
        pipe = _rate_connection().pipeline()
        pipe.incr(key)
        pipe.expire(key, RATE_WINDOW_SECONDS * 2)
        count = pipe.execute()[0]
    except RedisError as exc:
        logger.warning("rate limit not checked, Redis unreachable: %s", exc)
        return
    if count > limit:
        retry_after = max(1, int((window + 1) * RATE_WINDOW_SECONDS - now + 1))
        raise ApiError(429, "rate_limited", f"The token {token.name!r} made more than {limit} requests this minute.",
                       {"Retry-After": str(retry_after)})
