"""The service's routers, one per resource: search, identities and faces, system, the web page."""
