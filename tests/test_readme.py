"""The README's configuration table is the one the settings model generates."""

from __future__ import annotations

import os
import re
from pathlib import Path

from scripts.settings_table import table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_settings_table_is_current() -> None:
    readme = Path(ROOT, "README.md").read_text()
    m = re.search(r"<!-- settings-table:begin[^>]*-->\n(.*?)<!-- settings-table:end -->", readme, re.S)
    assert m, "README.md lost its settings-table markers"
    assert m.group(1).strip() == table().strip(), (
        "README.md settings table is stale: run scripts/settings_table.py"
    )


def test_readme_gives_the_two_commands() -> None:
    readme = Path(ROOT, "README.md").read_text()
    assert "make run" in readme and "make test" in readme
