"""Robots: the machines and accounts that run jobs, each with its own key."""
