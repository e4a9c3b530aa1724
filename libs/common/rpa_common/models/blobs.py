"""Blobs waiting to be deleted from the blob store (``rpa_common.blobs``).

Retention deletes screenshot rows and, in the same transaction, writes one ``blob_deletion`` row per
blob. After the commit the blobs are deleted, then their ``blob_deletion`` rows. A crash in between
leaves the rows: the next retention pass (of any scheduler replica) deletes those blobs again
(deleting a missing blob is not an error), so no blob outlives its row for long.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from rpa_common.models.base import Base, utcnow


class BlobDeletion(Base):
    __tablename__ = "blob_deletion"
    blob_key: Mapped[str] = mapped_column(sa.String(300), primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
