"""Print the configuration table of README.md from the ``Settings`` model (one source of truth)."""

from __future__ import annotations

from pydantic import SecretStr

from rpa_common.settings import Settings


def table() -> str:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, SecretStr):
            shown = "(secret)" if default.get_secret_value() else "(empty)"
        elif default is None:
            shown = "(none)"
        else:
            shown = f"`{default}`"
        lines.append(f"| `RPA_{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
