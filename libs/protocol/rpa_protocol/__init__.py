"""Robot protocol v1 (docs/robot-protocol.md): frames both ways, codes, parsing and encoding.

Pydantic only: the gateway, the reference robot and the tests import it; nothing here touches a
database, NATS or a socket.
"""

from rpa_protocol.codes import KNOWN_CAPABILITIES, PROTOCOL_VERSION, SUPPORTED_PROTOCOLS
from rpa_protocol.frames import (
    Ack,
    Error,
    GatewayFrame,
    Heartbeat,
    Hello,
    JobInterrupt,
    JobReport,
    JobRequest,
    JobRequested,
    JobStart,
    JobStatus,
    JobStop,
    JsonObject,
    LogBatch,
    LogEntry,
    LogLevelName,
    ReliableFrame,
    Resume,
    RobotFrame,
    Text,
    Welcome,
    command_id,
)
from rpa_protocol.wire import AnyRobotFrame, BadFrame, encode, parse_gateway_frame, parse_robot_frame

__all__ = [
    "KNOWN_CAPABILITIES",
    "PROTOCOL_VERSION",
    "SUPPORTED_PROTOCOLS",
    "Ack",
    "AnyRobotFrame",
    "BadFrame",
    "Error",
    "GatewayFrame",
    "Heartbeat",
    "Hello",
    "JobInterrupt",
    "JobReport",
    "JobRequest",
    "JobRequested",
    "JobStart",
    "JobStatus",
    "JobStop",
    "JsonObject",
    "LogBatch",
    "LogEntry",
    "LogLevelName",
    "ReliableFrame",
    "Resume",
    "RobotFrame",
    "Text",
    "Welcome",
    "command_id",
    "encode",
    "parse_gateway_frame",
    "parse_robot_frame",
]
