"""The signed-in person's own API tokens: issue one (shown once), see when each was last used, revoke one.

A scope beyond what the person may do is refused (ApiTokenQuerySet.issue) and shown with the reason beside it.
Tokens of service accounts are an admin's: `manage.py issuetoken --service`, revoked in the admin."""

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from api.models import ApiToken, Scope, scope_refusal

EXPIRY_DAYS = (7, 30, 90, 365)


@login_required
def tokens(request):
    issued, errors = None, []
    if request.method == "POST":
        name = request.POST.get("name", "").strip()
        scopes = request.POST.getlist("scopes")
        try:
            days = int(request.POST.get("days", ""))
        except ValueError:
            days = 0
        if not name:
            errors.append("Name the token after what will use it, e.g. 'laptop' or 'release-script'.")
        if not scopes:
            errors.append("Choose at least one scope.")
        if days not in EXPIRY_DAYS:
            errors.append(f"Choose an expiry of {', '.join(map(str, EXPIRY_DAYS))} days.")
        if not errors:
            try:
                token, plaintext = ApiToken.objects.issue(user=request.user, name=name, scopes=scopes, by=request.user,
                                                          expires_at=timezone.now() + timedelta(days=days))
            except ValueError as exc:
                errors.append(str(exc))
            else:
                issued = (token, plaintext)
    context = {
        "tokens": ApiToken.objects.filter(user=request.user),
        # (value, label, why the person may not have it or ""): the page says so rather than hiding the scope.
        "scopes": [(value, label, scope_refusal(request.user, value)) for value, label in Scope.choices],
        "expiry_days": EXPIRY_DAYS,
        "issued": issued,
        "errors": errors,
        "now": timezone.now(),
    }
    return render(request, "api/tokens.html", context, status=400 if errors else 200)


@require_POST
@login_required
def token_revoke(request, pk):
    token = get_object_or_404(ApiToken, pk=pk, user=request.user)
    if token.revoke(by=request.user):
        messages.success(request, f"The token {token.name!r} is revoked: it is refused from its next request on.")
    else:
        messages.error(request, f"The token {token.name!r} was already revoked; nothing was changed.")
    return redirect("api_tokens")
