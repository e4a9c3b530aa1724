"""The audit trail, read-only: the account's records with filters and a cursor, and the check of
its hash chain. No endpoint changes or removes a record; every other domain writes them through
``rpa_api.kit.audit.record`` in the transaction of the change."""
