from django.http import HttpResponse


def dashboard(request):
    return HttpResponse("dashboard")


def health(request):
    return HttpResponse("ok")


def repository_detail(request, name):
    raise NotImplementedError


def release_detail(request, name, version):
    raise NotImplementedError


def deployment_detail(request, pk):
    raise NotImplementedError


def deployment_log(request, pk):
    raise NotImplementedError
