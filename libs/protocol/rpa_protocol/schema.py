"""The protocol's JSON Schema, generated from the models: what a robot in another language validates.

python -m rpa_protocol.schema            # print it
python -m rpa_protocol.schema --write    # rewrite docs/robot-protocol.schema.json
python -m rpa_protocol.schema --check    # exit 1 when the committed file is not current
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from rpa_protocol.codes import (
    ERROR_CODES,
    KNOWN_CAPABILITIES,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
)
from rpa_protocol.frames import GatewayFrame, RobotFrame

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "docs" / "robot-protocol.schema.json"
_REF = "#/$defs/{model}"


def _union(adapter: TypeAdapter[Any], defs: dict[str, Any]) -> dict[str, Any]:
    schema = adapter.json_schema(ref_template=_REF, mode="validation")
    defs.update(schema.pop("$defs", {}))
    return schema


def protocol_schema() -> dict[str, Any]:
    """One JSON Schema document: ``RobotFrame`` (robot -> gateway) and ``GatewayFrame`` (back)."""
    defs: dict[str, Any] = {}
    robot = _union(TypeAdapter(RobotFrame), defs)
    gateway = _union(TypeAdapter(GatewayFrame), defs)
    defs["RobotFrame"] = {
        "description": "A frame a robot sends. Unknown fields are refused by the gateway.",
        **robot,
    }
    defs["GatewayFrame"] = {
        "description": (
            "A frame the gateway sends. Robots must ignore fields and frame types they do not know."
        ),
        **gateway,
    }
    for model in defs.values():
        # ``type`` has a default so that code can build frames without repeating it, but on the
        # wire it is the discriminator: always present.
        kind = model.get("properties", {}).get("type")
        if kind is not None and "const" in kind:
            kind.pop("default", None)
            model["required"] = ["type", *[r for r in model.get("required", []) if r != "type"]]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/rpa-orchestrator/robot-protocol.schema.json",
        "title": f"RPA robot protocol v{PROTOCOL_VERSION}",
        "description": (
            "Every WebSocket text frame between a robot and the robot gateway (docs/robot-protocol.md). "
            "Generated from libs/protocol (rpa_protocol); do not edit by hand. "
            f"Strings never contain NUL; a log message is at most {MAX_MESSAGE_BYTES} bytes in UTF-8. "
            f"Capabilities: {', '.join(KNOWN_CAPABILITIES)}. Error codes: {', '.join(ERROR_CODES)}."
        ),
        "x-protocol-version": PROTOCOL_VERSION,
        "oneOf": [{"$ref": "#/$defs/RobotFrame"}, {"$ref": "#/$defs/GatewayFrame"}],
        "$defs": dict(sorted(defs.items())),
    }


def render() -> str:
    return json.dumps(protocol_schema(), indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rpa_protocol.schema", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"write {SCHEMA_PATH}")
    group.add_argument("--check", action="store_true", help="fail when the committed schema is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        SCHEMA_PATH.write_text(text, encoding="utf-8")
    elif args.check:
        current = SCHEMA_PATH.read_text(encoding="utf-8") if SCHEMA_PATH.exists() else ""
        if current != text:
            print(f"{SCHEMA_PATH} is stale: run python -m rpa_protocol.schema --write", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
