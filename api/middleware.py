from pipelines.models.audit import acting_via


class AuditChannelMiddleware:
    """Each request gets its own audit channel: the API's token check sets it ("token ci-deploy"), and it ends
    with the request, so a thread serving the next request never inherits it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        with acting_via(""):
            return self.get_response(request)
