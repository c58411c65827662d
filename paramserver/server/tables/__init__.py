"""Row-sparse embedding tables on a shard (issue #16): rows, optimizers, the service."""

from paramserver.server.tables.rows import RowTable
from paramserver.server.tables.service import TableService

__all__ = ["RowTable", "TableService"]
