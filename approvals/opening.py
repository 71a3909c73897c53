def on_deployment_held(sender, deployment, **kwargs):
    raise NotImplementedError
