"""Python SDK for the orchestrator's REST API, and the ``rpa`` command line built on it."""
