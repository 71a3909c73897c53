"""The approval-wait figures for the slot approvals fills on the insights page of pipelines."""

from django import template

from approvals import insights

register = template.Library()


@register.simple_tag
def approval_waits(scope):
    waits = insights.approval_waits(scope)
    return {**waits, "chart": insights.chart(waits)}
