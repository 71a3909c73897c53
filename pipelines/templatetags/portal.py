"""Small formatting filters for the portal's pages, and the slots an upper app fills."""

from django import template
from django.conf import settings
from django.template.loader import render_to_string, select_template
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import mark_safe

register = template.Library()


@register.filter
def age(value, now=None):
    """How long ago a moment was, in a compact form: "just now", "42 s ago", "3 min ago", "5 h ago", "2 d ago".
    `now`: the time to count from, when a page counts from the same one for all its moments."""
    if not value:
        return ""
    seconds = max(int(((now or timezone.now()) - value).total_seconds()), 0)
    if seconds < 10:
        return "just now"
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


@register.filter
def duration(value):
    """A timedelta as "42 s", "3 min 05 s" or "1 h 02 min"."""
    if value is None:
        return ""
    seconds = max(int(value.total_seconds()), 0)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@register.filter
def first_line(text):
    """The first non-empty line of a commit message."""
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


@register.filter
def without_credentials(url):
    """A repository URL as people may see it: no token or password."""
    from pipelines.git import display_url

    return display_url(url)


@register.simple_tag
def log_lines(lines):
    """The lines of a run's log (pipelines/run_log.LogLine) as HTML, each with its time and stderr marked.

    Built here rather than in a template loop: a page shows up to 2,000 lines, and the loop spent 0.1 ms a line
    on resolving variables and formatting the same time again (the lines of one stored chunk share a time)."""
    times, html = {}, []
    for line in lines:
        if line.at not in times:
            local = timezone.template_localtime(line.at) if line.at else None
            times[line.at] = (local.isoformat(), local.strftime("%H:%M:%S")) if local else ("", "")
        iso, clock = times[line.at]
        kind = " stderr" if line.stderr else " command" if line.command else ""
        stream = '<span class="stream" title="standard error">err</span>' if line.stderr else ""
        html.append(f'<div class="line{kind}"><time datetime="{iso}">{clock}</time>{stream}'
                    f'<span class="text">{escape(line.text)}</span></div>')
    return mark_safe("".join(html))


@register.simple_tag
def options(choices, selected, label="{}"):
    """The <option>s of a select: `choices` are values, or (value, label) pairs; the one equal to `selected`
    is selected; `label` formats a bare value ("last {}").

    Built here rather than in a template loop: the repository filters list every repository, and at 2,000 of
    them the loop took two thirds of the insights page's time."""
    selected = "" if selected is None else str(selected)
    html = []
    for choice in choices:
        value, text = choice if isinstance(choice, (tuple, list)) else (choice, label.format(choice))
        value = str(value)
        mark = " selected" if value == selected else ""
        html.append(f'<option value="{escape(value)}"{mark}>{escape(text)}</option>')
    return mark_safe("".join(html))


@register.simple_tag(takes_context=True)
def slot(context, name, **values):
    """Where another app adds to a page of pipelines without pipelines naming it: the templates listed for
    `name` in settings.GITOPS_TEMPLATE_SLOTS ({slot: [template, …]}), rendered here with the page's context
    and `values`. The same settings hook as guards and follow-ups: pipelines knows only the slot's name."""
    rendered = []
    for template_name in settings.GITOPS_TEMPLATE_SLOTS.get(name, ()):
        with context.push(**values):
            rendered.append(select_template([template_name]).template.render(context))
    return mark_safe("".join(rendered))


@register.simple_tag
def unsealed_steps_banner():
    """The warning every page shows while steps may run unsealed (settings.GITOPS_ALLOW_UNSEALED_STEPS, a
    throwaway demo's setting: pipelines/sandbox.py); nothing otherwise."""
    if not settings.GITOPS_ALLOW_UNSEALED_STEPS:
        return ""
    return render_to_string("pipelines/_unsealed_steps.html")
