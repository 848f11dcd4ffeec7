"""Multi-IdP authenticator for analysis facilities."""
