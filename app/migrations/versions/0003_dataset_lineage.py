"""datasets: the lineage of a corrected dataset

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07

- ``lineage`` (JSON, nullable): for a dataset made from another plus corrections
  (app/dataset_corrections.py), where it came from: the parent dataset, the model whose
  findings were applied (or the sha256 of the uploaded corrections CSV), the rule and N,
  and how many rows were relabelled or dropped. NULL for a dataset uploaded or
  registered as it is, and for every dataset stored before this revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


# Plain ALTER TABLE (SQLite >= 3.35 drops a column in place): a batch operation would
# copy and drop the datasets table, which the jobs' foreign key refuses.
def upgrade() -> None:
    op.add_column("datasets", sa.Column("lineage", sa.JSON, nullable=True))


def downgrade() -> None:
    op.drop_column("datasets", "lineage")
