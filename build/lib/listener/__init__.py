"""The batchobs Airflow listener: V3 gauges and per-run events.

Importing this package does not import Airflow; the plugin lives in
``listener.plugin`` and is registered through the ``airflow.plugins`` entry point.
"""

from __future__ import annotations

from .metrics import record_metric

__all__ = ["record_metric"]
