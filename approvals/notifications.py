def notify_decided(change_request_id):
    pass
