"""The tables batchobs writes and keeps its schema in, by name: the one definition.

Here, beside the event contract, because both sides of the contract need them and must
not import each other: the ingester writes them, the warehouse creates them.

The ingester inserts into ``EVENTS`` and ``DEAD_LETTERS``; ``batchobs warehouse migrate``
creates them (``warehouse/migrations``) and records what it applied in
``SCHEMA_MIGRATIONS``.  On a ClickHouse cluster each written name is a ``Distributed`` table
in front of ``<name>_local`` on every node (``warehouse/layout.py``), so writers and readers
use the same names in both deployments.
"""

from __future__ import annotations

__all__ = ["DEAD_LETTERS", "EVENTS", "SCHEMA_MIGRATIONS", "WRITTEN"]

EVENTS = "events"
DEAD_LETTERS = "dead_letters"
SCHEMA_MIGRATIONS = "schema_migrations"
WRITTEN = (EVENTS, DEAD_LETTERS)  # what the ingester inserts into
