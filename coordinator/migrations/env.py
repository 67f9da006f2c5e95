"""Alembic environment: migrations always run online, on the engine the coordinator passes in."""

from __future__ import annotations

from alembic import context

from swarm.coordinator.storage import Base

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=engine.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
