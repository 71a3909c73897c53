"""Small SVG charts rendered on the server: no JavaScript, readable by a screen reader (a title and a
description on the chart, a <title> on every bar and point), with the numbers in a table beside them."""

from django.utils.html import escape, format_html
from django.utils.safestring import mark_safe

WIDTH, HEIGHT = 640, 200
MARGIN_LEFT, MARGIN_BOTTOM, MARGIN_TOP = 44, 24, 12


def bar_chart(*, title, description, bars, unit=""):
    """`bars`: [(label, value, tooltip)], value a number ≥ 0. One <rect class="bar"> per bar."""
    top = max([value for _, value, _ in bars] + [0]) or 1
    plot_width, plot_height = WIDTH - MARGIN_LEFT, HEIGHT - MARGIN_BOTTOM - MARGIN_TOP
    slot = plot_width / max(len(bars), 1)
    parts = []
    for i, (label, value, tooltip) in enumerate(bars):
        height = plot_height * value / top
        width = min(slot * 0.7, 72)  # a lone bar stays a bar, not a wall
        x, y = MARGIN_LEFT + i * slot + (slot - width) / 2, MARGIN_TOP + plot_height - height
        parts.append(format_html(
            '<rect class="bar" x="{}" y="{}" width="{}" height="{}"><title>{}</title></rect>',
            _n(x), _n(y), _n(width), _n(height), tooltip))
        if len(bars) <= 16 or i % max(len(bars) // 8, 1) == 0:
            parts.append(_label(MARGIN_LEFT + i * slot + slot / 2, HEIGHT - 6, label))
    return _svg(title, description, _axis(top, unit) + "".join(parts))


def line_chart(*, title, description, points, unit=""):
    """`points`: [(label, value or None, tooltip)]; a gap where the value is None. One <circle> per value."""
    values = [value for _, value, _ in points if value is not None]
    top = max(values + [0]) or 1
    plot_width, plot_height = WIDTH - MARGIN_LEFT, HEIGHT - MARGIN_BOTTOM - MARGIN_TOP
    slot = plot_width / max(len(points), 1)
    parts, segment, segments = [], [], []
    for i, (label, value, tooltip) in enumerate(points):
        x = MARGIN_LEFT + i * slot + slot / 2
        if len(points) <= 16 or i % max(len(points) // 8, 1) == 0:
            parts.append(_label(x, HEIGHT - 6, label))
        if value is None:
            segments.append(segment)
            segment = []
            continue
        y = MARGIN_TOP + plot_height - plot_height * value / top
        segment.append((x, y))
        parts.append(format_html('<circle class="point" cx="{}" cy="{}" r="3.5"><title>{}</title></circle>', _n(x), _n(y), tooltip))
    segments.append(segment)
    lines = "".join(
        format_html('<polyline class="line" fill="none" points="{}"/>', " ".join(f"{x:.1f},{y:.1f}" for x, y in s))
        for s in segments if len(s) > 1)
    return _svg(title, description, _axis(top, unit) + lines + "".join(parts))


def _axis(top, unit):
    base = HEIGHT - MARGIN_BOTTOM
    return (format_html('<line class="axis" x1="{}" y1="{}" x2="{}" y2="{}"/>', MARGIN_LEFT, base, WIDTH, base)
            + format_html('<text class="tick" x="{}" y="{}" text-anchor="end">{}</text>', MARGIN_LEFT - 6, MARGIN_TOP + 4,
                          f"{_number(top)}{unit}")
            + format_html('<text class="tick" x="{}" y="{}" text-anchor="end">0</text>', MARGIN_LEFT - 6, base))


def _label(x, y, text):
    return format_html('<text class="tick" x="{}" y="{}" text-anchor="middle">{}</text>', _n(x), y, text)


def _n(value):
    """A coordinate, to a tenth."""
    return f"{value:.1f}"


def _number(value):
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def _svg(title, description, body):
    ident = "chart-" + "".join(c if c.isalnum() else "-" for c in title.lower())
    return mark_safe(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="{ident}-title {ident}-desc" '
        f'xmlns="http://www.w3.org/2000/svg"><title id="{ident}-title">{escape(title)}</title>'
        f'<desc id="{ident}-desc">{escape(description)}</desc>{body}</svg>')
