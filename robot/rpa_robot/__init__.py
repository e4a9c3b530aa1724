"""The reference robot (``rpa-robot``) and the script SDK (``from rpa_robot import sdk``).

A robot is a separate product: it talks to the orchestrator only over HTTP and WebSocket (robot
protocol v1, docs/robot-protocol.md) and imports nothing from the server packages.
"""

__version__ = "0.1.0"
