def poll_repository(repository):
    raise NotImplementedError
