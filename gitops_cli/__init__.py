"""`gitops`: the portal's command line, a client of its REST API (/api/v1/)."""
