def receive(request, name):
    raise NotImplementedError
