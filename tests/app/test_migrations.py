"""The schema's migrations: a store made at 0001 (with a model in it) upgrades to head,
its model then has no noise report and no label issues, and the way back works."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect, text

from app import db
from tests.support.service_client import make_settings

NOW = "2026-11-01 00:00:00"


def store_at(tmp_path, revision: str):
    """A store migrated to ``revision`` holding dataset 'd' and its succeeded job 'j':
    (settings, alembic config, engine)."""
    settings = make_settings(tmp_path / "data")
    settings.data_dir.mkdir(parents=True)
    config = db.alembic_config(settings)
    command.upgrade(config, revision)
    engine = db.make_engine(settings.resolved_database_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO datasets VALUES ('d', 'n', 'npz', 'multiclass', 1, 0, 0, '[2]', 2,"
                " '[\"a\", \"b\"]', :sha, 1, 'p', :now)"
            ),
            {"sha": "0" * 64, "now": NOW},
        )
        conn.execute(
            text(
                "INSERT INTO jobs (id, dataset_id, status, spec, progress, cancel_requested,"
                " attempts, created_at) VALUES ('j', 'd', 'succeeded', '{}', '{}', 0, 1, :now)"
            ),
            {"now": NOW},
        )
    return settings, config, engine


def test_0002_adds_nullable_noise_columns_to_existing_models_and_downgrades(tmp_path):
    settings, config, engine = store_at(tmp_path, "0001")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO models VALUES ('m', 'j', 'model', 'het', 'multiclass', '[2]', 2,"
                " '[\"a\", \"b\"]', '{}', NULL, 'x.onnx', :sha, :now)"
            ),
            {"sha": "0" * 64, "now": NOW},
        )
    db.migrate(settings)
    columns = {c["name"] for c in inspect(engine).get_columns("models")}
    assert {"noise_report", "label_issues_path"} <= columns
    with engine.connect() as conn:
        row = conn.execute(text("SELECT noise_report, label_issues_path FROM models")).one()
    assert tuple(row) == (None, None)  # trained before: the routes answer 409
    command.downgrade(config, "0001")
    columns = {c["name"] for c in inspect(engine).get_columns("models")}
    assert "noise_report" not in columns and "label_issues_path" not in columns
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM models")).scalar() == 1
    engine.dispose()


def test_0003_adds_a_null_lineage_to_existing_datasets_and_downgrades(tmp_path):
    settings, config, engine = store_at(tmp_path, "0002")
    db.migrate(settings)
    assert "lineage" in {c["name"] for c in inspect(engine).get_columns("datasets")}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT lineage FROM datasets")).scalar() is None
    command.downgrade(config, "0002")
    assert "lineage" not in {c["name"] for c in inspect(engine).get_columns("datasets")}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == 1
    engine.dispose()
