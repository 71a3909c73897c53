"""Streamed CSV downloads whose cells a spreadsheet shows as text (the rule of the audit export,
pipelines/audit_views.py): a cell that would start a formula gets a leading apostrophe."""

import csv

from django.http import StreamingHttpResponse

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class _Echo:
    """A file-like object whose write() hands back the line, for csv.writer to stream through."""

    def write(self, value):
        return value


def spreadsheet_safe(value):
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_attachment(header, rows, filename):
    """A streamed text/csv attachment of `header` then `rows` (any iterable of sequences)."""
    def lines():
        writer = csv.writer(_Echo())
        yield writer.writerow(header)
        for row in rows:
            yield writer.writerow([spreadsheet_safe(value) for value in row])

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
