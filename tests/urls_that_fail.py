"""The portal's URLs plus one view that raises, for the 500 page's test."""

from django.urls import path

from gitops_portal.urls import urlpatterns as portal_urlpatterns


def boom(request):
    raise RuntimeError("a bug in a view")


urlpatterns = [path("boom/", boom), *portal_urlpatterns]
