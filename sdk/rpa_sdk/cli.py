"""The ``rpa`` command line (built in issue 13)."""


def main() -> None:
    raise SystemExit("rpa: not built yet")
