"""Roles and permissions."""
