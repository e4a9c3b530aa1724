"""Per-account identity providers (LDAP, OpenID Connect) and the login through them (issue 12)."""
