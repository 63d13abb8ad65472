"""Authentication of the requests a run sends: OAuth2 client-credentials tokens, shared per machine."""
