"""The coordinator's database: migrations match the models, URLs are normalized."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from swarm.coordinator.storage import Base, Database, Event, Job, normalize_url, sqlite_url
from swarm.protocol.errors import ConfigError


def schema_drift(db: Database) -> list[object]:
    with db.engine.connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


def alembic_revision(db: Database) -> str | None:
    with db.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def test_migrations_match_the_models_on_sqlite(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path))
    try:
        db.migrate()
        assert schema_drift(db) == []
        assert set(inspect(db.engine).get_table_names()) >= set(Base.metadata.tables)
    finally:
        db.dispose()


@pytest.mark.postgres
def test_migrations_match_the_models_on_postgresql(postgres_url: str) -> None:
    db = Database(postgres_url)
    try:
        db.migrate()
        assert schema_drift(db) == []
        assert set(inspect(db.engine).get_table_names()) >= set(Base.metadata.tables)
    finally:
        db.dispose()


def test_an_empty_database_differs_from_the_models(tmp_path: Path) -> None:
    # The drift check above can fail: before migrating, every table is missing.
    db = Database(sqlite_url(tmp_path))
    try:
        assert len(schema_drift(db)) >= len(Base.metadata.tables)
    finally:
        db.dispose()


def test_migrating_twice_is_a_no_op_and_keeps_data(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path))
    try:
        db.migrate()
        revision = alembic_revision(db)
        assert revision is not None
        with db.transaction() as session:
            session.add(
                Job(
                    id="ftjob-keep",
                    status="queued",
                    model="micro-llama",
                    spec={},
                    created_at=1.0,
                    model_config_sha256="0" * 64,
                    heldout_sha256="0" * 64,
                    shard_sha256s=[],
                    param_shapes={},
                    num_trainable_params=0,
                    tasks_created=0,
                    rounds_completed=0,
                    trained_tokens=0,
                )
            )
        db.migrate()
        assert alembic_revision(db) == revision
        assert schema_drift(db) == []
        with db.transaction() as session:
            assert session.get(Job, "ftjob-keep") is not None
    finally:
        db.dispose()


def test_a_second_handle_on_a_migrated_file_sees_the_same_schema(tmp_path: Path) -> None:
    first = Database(sqlite_url(tmp_path))
    first.migrate()
    first.dispose()
    second = Database(sqlite_url(tmp_path))
    try:
        second.migrate()
        assert schema_drift(second) == []
    finally:
        second.dispose()


def test_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path))
    try:
        db.migrate()
        with db.transaction() as session:
            session.add(
                Job(
                    id="ftjob-a",
                    status="queued",
                    model="m",
                    spec={},
                    created_at=1.0,
                    model_config_sha256="0" * 64,
                    heldout_sha256="0" * 64,
                    shard_sha256s=[],
                    param_shapes={},
                    num_trainable_params=0,
                    tasks_created=0,
                    rounds_completed=0,
                    trained_tokens=0,
                )
            )
        with pytest.raises(RuntimeError), db.transaction() as session:
            session.add(
                Event(job_id="ftjob-a", created_at=1.0, level="info", type="message", message="x")
            )
            session.flush()
            raise RuntimeError("abort")
        with db.engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM events")).scalar() == 0
    finally:
        db.dispose()


def test_sqlite_enforces_foreign_keys(tmp_path: Path) -> None:
    db = Database(sqlite_url(tmp_path))
    try:
        db.migrate()
        with pytest.raises(Exception, match="FOREIGN KEY"), db.transaction() as session:
            session.add(
                Event(job_id="ftjob-none", created_at=1.0, level="info", type="message", message="")
            )
    finally:
        db.dispose()


def test_in_memory_sqlite_database_migrates_and_pings() -> None:
    db = Database("sqlite://")
    try:
        db.migrate()
        assert schema_drift(db) == []
        assert db.ping_s() >= 0
    finally:
        db.dispose()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@db:5432/swarm", "postgresql+psycopg://u:p@db:5432/swarm"),
        ("postgres://u@db/swarm", "postgresql+psycopg://u@db/swarm"),
        ("postgresql+psycopg://u@db/swarm", "postgresql+psycopg://u@db/swarm"),
        ("sqlite:///data/swarm.db", "sqlite:///data/swarm.db"),
        ("sqlite://", "sqlite://"),
    ],
)
def test_normalize_url(url: str, expected: str) -> None:
    assert normalize_url(url) == expected


@pytest.mark.parametrize(
    "url", ["mysql://u@db/swarm", "mysql+pymysql://u@db/x", "swarm.db", "", "http://x"]
)
def test_normalize_url_rejects_other_databases(url: str) -> None:
    with pytest.raises(ConfigError, match="sqlite"):
        normalize_url(url)


def test_database_rejects_mysql_url() -> None:
    with pytest.raises(ConfigError):
        Database("mysql://u@localhost/swarm")


def test_database_uses_psycopg_for_postgres_urls() -> None:
    db = Database("postgres://u@127.0.0.1:1/none")
    try:
        assert db.engine.dialect.name == "postgresql"
        assert db.engine.dialect.driver == "psycopg"
        assert not db.is_sqlite
    finally:
        db.dispose()


def test_rounds_from_before_broadcast_deltas_send_workers_the_coordinators_parameters(
    tmp_path: Path,
) -> None:
    from alembic import command

    from swarm.coordinator.migrations import alembic_config

    db = Database(sqlite_url(tmp_path))
    try:
        command.upgrade(alembic_config(db.engine), "0001")
        with db.engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO jobs (id, status, model, spec, created_at, model_config_sha256, "
                    "heldout_sha256, shard_sha256s, param_shapes, num_trainable_params, "
                    "tasks_created, rounds_completed, trained_tokens) VALUES ('ftjob-old', "
                    "'running', 'tiny-llama', '{}', 0, 'c', 'h', '[]', '{}', 1, 0, 0, 0)"
                )
            )
            connection.execute(
                text(
                    'INSERT INTO rounds (job_id, "index", status, params_sha256, num_tasks, '
                    "opened_at, tokens, bytes_up, bytes_down, num_clients) VALUES "
                    "('ftjob-old', 0, 'open', 'p0', 2, 0, 0, 0, 0, 0)"
                )
            )
        db.migrate()
        with db.engine.connect() as connection:
            row = connection.execute(
                text("SELECT worker_params_sha256, delta_sha256 FROM rounds")
            ).one()
        assert tuple(row) == ("p0", None)
        assert alembic_revision(db) == "0009"
    finally:
        db.dispose()
