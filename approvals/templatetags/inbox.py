"""The rows of the inbox's lists of change requests, built in Python: the inbox shows up to 150 rows, and the
template loop spent most of the page's time on them (a reverse() per link, two includes per row)."""

from html import escape as _e

from django import template
from django.utils import timezone
from django.utils.safestring import mark_safe
from django.utils.timesince import timeuntil

from pipelines.templatetags.portal import age
from pipelines.url_patterns import url_pattern

register = template.Library()


def _time(when, *, css="", text=None):
    local = timezone.localtime(when)
    css = f' class="{css}"' if css else ""
    return (f'<time{css} datetime="{local.isoformat()}" title="{local:%Y-%m-%d %H:%M:%S} {_e(local.tzname() or "")}">'
            f'{_e(age(when) if text is None else text)}</time>')


def _expiry(cr, now):
    if not cr.expires_at:
        return '<span class="muted">no timeout</span>'
    if cr.expires_at <= now:
        return _time(cr.expires_at, css="error-text", text="expired")
    return _time(cr.expires_at, text=f"in {timeuntil(cr.expires_at, now)}")


@register.simple_tag
def change_request_rows(requests, now, show_outcome=False):
    change_url = url_pattern("change_request_detail", 987654321)
    repository_url = url_pattern("repository_detail", "repo-slug-0")
    rows = []
    for cr in requests:
        url = _e(change_url.format(cr.pk))
        rollback = ' <span class="tag warn-tag">rollback</span>' if cr.deployment.trigger == "rollback" else ""
        requester = _e(cr.requested_by.get_username()) if cr.requested_by else '<span class="muted">automatic</span>'
        if show_outcome:
            decided = _time(cr.decided_at) if cr.decided_at else ""
            last = (f'<td><span class="badge cr-{_e(cr.status)}">{_e(str(cr.get_status_display()))}</span></td>'
                    f'<td class="small">{decided}</td>')
        else:
            last = f'<td class="small">{_expiry(cr, now)}</td>'
        rows.append(
            f'<tr><td><a href="{url}">#{cr.pk}</a></td>'
            f'<td><a href="{_e(repository_url.format(cr.repository.name))}">{_e(cr.repository.name)}</a></td>'
            f'<td><a class="version" href="{url}">{_e(cr.deployment.release.version)}</a>{rollback}</td>'
            f'<td>{_e(cr.environment.name)}</td><td>{requester}</td>'
            f'<td class="small">{_time(cr.opened_at)}</td>'
            f'<td><span class="approvals-count">{cr.approvals_given}/{cr.required_approvals}</span></td>{last}</tr>'
        )
    return mark_safe("\n".join(rows))
