"""What every domain package needs, in one place, so a new domain is a small copy of an existing one.

- ``lookup``: fetch one object the caller owns, or 404 as if it did not exist.
- ``pagination``: ``?limit=&offset=&sort=`` for every list, and the ``Page`` envelope.
- ``audit``: the append-only audit record, written in the same transaction as the change.
- ``names``: "is this name taken" checks and the flush that turns a unique-key race into the same 409.
- ``patch``: PATCH bodies applied field by field, with the ``{"from", "to"}`` changes for the audit.
- ``folders``: may the caller put an object into this access folder.
- ``schemas``: the request/response base models and the common field types.
"""
