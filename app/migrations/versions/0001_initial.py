"""initial schema: datasets, jobs, job_history, models, aliases

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("task", sa.String(16), nullable=False),
        sa.Column("num_train", sa.Integer, nullable=False),
        sa.Column("num_val", sa.Integer, nullable=False),
        sa.Column("num_test", sa.Integer, nullable=False),
        sa.Column("input_shape", sa.JSON, nullable=False),
        sa.Column("num_classes", sa.Integer, nullable=False),
        sa.Column("class_names", sa.JSON, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False, index=True),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("artifact_path", sa.Text, nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "dataset_id", sa.String(32), sa.ForeignKey("datasets.id"), nullable=False, index=True
        ),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("progress", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("model_id", sa.String(32), nullable=True),
        sa.Column("baseline_model_id", sa.String(32), nullable=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("started_at", UTC_TIME, nullable=True),
        sa.Column("finished_at", UTC_TIME, nullable=True),
    )
    op.create_table(
        "job_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "job_id",
            sa.String(32),
            sa.ForeignKey("jobs.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), nullable=False, index=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("head", sa.String(16), nullable=False),
        sa.Column("task", sa.String(16), nullable=False),
        sa.Column("input_shape", sa.JSON, nullable=False),
        sa.Column("num_classes", sa.Integer, nullable=False),
        sa.Column("class_names", sa.JSON, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("baseline_metrics", sa.JSON, nullable=True),
        sa.Column("onnx_path", sa.Text, nullable=False),
        sa.Column("onnx_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.UniqueConstraint("job_id", "role", name="uq_models_job_role"),
    )
    op.create_table(
        "aliases",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("model_id", sa.String(32), sa.ForeignKey("models.id"), nullable=False),
        sa.Column("updated_at", UTC_TIME, nullable=False),
    )


def downgrade() -> None:
    for table in ("aliases", "models", "job_history", "jobs", "datasets"):
        op.drop_table(table)
