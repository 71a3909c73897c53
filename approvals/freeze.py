def deploy_guard(deployment, now):
    return None
