"""Row-sparse embedding tables (issue #16): records, the row initialiser, row routing."""

from paramserver.tables.init import initial_rows
from paramserver.tables.records import (
    DeclareTables,
    RowPullHeader,
    RowPullRequest,
    RowPushHeader,
    TableOptimizer,
    TablePlan,
    TableSpec,
    TableStatus,
    shard_of,
)

__all__ = ["DeclareTables", "RowPullHeader", "RowPullRequest", "RowPushHeader",
           "TableOptimizer", "TablePlan", "TableSpec", "TableStatus", "initial_rows",
           "shard_of"]
