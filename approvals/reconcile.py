def reconcile(now):
    return {}
