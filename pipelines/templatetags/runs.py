"""Filters for a run of any kind on the pages (pipelines/cancelling.py names and cancels them)."""

from django import template
from django.urls import reverse

from pipelines import cancelling

register = template.Library()


@register.filter
def run_label(run):
    """"build #3 of shop v1.0.0", "preview #2 of deployment #9", "deployment #7"."""
    return cancelling.label(run)


@register.filter
def cancel_url(run):
    return reverse(f"{run._meta.model_name}_cancel", args=[run.pk])
