"""Per-account identity providers (LDAP) and the login through them (issue 12)."""
