"""What the benchmarks share. A package (not ``bench/*.py``) so that ``make bench``, which runs every
``bench/*.py``, does not run it; the benchmarks import it as ``harness`` (their folder is first on
``sys.path``).

- ``harness.infra``: private NATS, a fresh database, the services as real processes, seed data.
- ``harness.peers``: the light processes a benchmark spreads its load over (robot clients, bare
  servers); they import only what they use, so they start fast and stay small.
"""
