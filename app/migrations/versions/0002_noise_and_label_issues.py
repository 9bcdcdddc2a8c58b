"""models: the noise report and the label-issues artifact of a trained model

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

- ``noise_report`` (JSON, nullable): the noise report over the training inputs
  (models/noise_report.py), class indices only; NULL for a model trained before this
  revision, a softmax baseline or a multilabel model.
- ``label_issues_path`` (text, nullable): the label issues of every training row, an
  ``.npz`` artifact (core/label_issues_file.py) relative to the data dir; NULL for a model
  trained before this revision or a multilabel model.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("noise_report", sa.JSON, nullable=True))
        batch.add_column(sa.Column("label_issues_path", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_column("label_issues_path")
        batch.drop_column("noise_report")
