"""Coordinator: opens sessions for unattended robots on a terminal server."""
