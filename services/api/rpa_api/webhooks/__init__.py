"""Outgoing webhooks: subscriptions, their secrets, their delivery log (issue 13)."""
