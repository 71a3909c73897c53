"""URLs made by filling in a reversed pattern: a page with hundreds of links (the dashboard, the inbox)
would spend more on a reverse() for each than on its queries."""

from django.urls import reverse


def url_pattern(name, *placeholders):
    """The URL of the route `name` with "{}" where each placeholder argument was: fill it with str.format.
    Placeholders must not occur elsewhere in the URL; the caller quotes what it fills in as reverse() would."""
    url = reverse(name, args=placeholders)
    for placeholder in placeholders:
        url = url.replace(str(placeholder), "{}", 1)
    return url
