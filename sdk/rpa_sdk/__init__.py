"""Python SDK for the orchestrator's REST API, and the ``rpa`` command line built on it."""

from rpa_sdk.client import Client
from rpa_sdk.errors import ApiError

__all__ = ["ApiError", "Client"]
