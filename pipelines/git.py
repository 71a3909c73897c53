"""All git access of the portal. The only module that imports GitPython."""


def materialise(repository, commit_sha, destination):
    raise NotImplementedError
