"""The configuration table of README.md from the ``Settings`` model (one source of truth).

``python scripts/settings_table.py`` prints it; ``--write`` puts it into README.md between the
``settings-table`` markers (tests/test_readme.py fails while it is stale).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

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


def write(readme: Path = Path(__file__).resolve().parent.parent / "README.md") -> None:
    text = readme.read_text()
    pattern = re.compile(r"(<!-- settings-table:begin[^>]*-->\n)(.*?)(<!-- settings-table:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit("README.md has no settings-table markers")
    readme.write_text(pattern.sub(lambda m: m.group(1) + table() + "\n" + m.group(3), text, count=1))


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
    else:
        print(table())
