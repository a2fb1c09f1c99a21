"""Run a DAG once with ``dag.test()`` and print what the metadata DB holds of it.

Runs inside a compat venv (any supported Airflow, only the core batchobs wheel
installed), so it imports nothing from the tests or the other packages.
Prints one line ``RESULT {json}``: the run's id and state, and each task
instance's task_id, map_index, state and try_number as the metadata DB has them.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from typing import Any


def start_execution_api_as_in_3_3() -> None:
    """Airflow 3.2's in-process execution API (dag.test() only) starts its app's lifespan
    on a loop it does not own and without waiting for it; with today's a2wsgi every
    task's request then fails (``svcs_registry`` missing from the app state).  Airflow
    3.3 owns the loop and waits: do as 3.3 does.  Test-only: the listener is not
    involved, and a 3.2 deployment's task runners do not use this transport."""
    import asyncio
    import threading
    from contextlib import AsyncExitStack

    import httpx
    from a2wsgi import ASGIMiddleware
    from airflow.api_fastapi.execution_api.app import InProcessExecutionAPI

    built: dict[int, Any] = {}

    def transport(self: Any) -> Any:
        if id(self) not in built:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="InProcessExecutionAPI-loop", daemon=True).start()
            middleware = ASGIMiddleware(self.app, loop=loop)
            stack = AsyncExitStack()

            async def start_lifespan() -> None:
                await stack.enter_async_context(self.app.router.lifespan_context(self.app))

            asyncio.run_coroutine_threadsafe(start_lifespan(), loop).result(timeout=300)
            built[id(self)] = (self, stack, httpx.WSGITransport(app=middleware))
        return built[id(self)][2]

    InProcessExecutionAPI.transport = property(transport)


def main(dag_file: str) -> None:
    import airflow

    if airflow.__version__.startswith("3.2."):
        start_execution_api_as_in_3_3()
    spec = importlib.util.spec_from_file_location("dagfile", dag_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = next(v for v in vars(module).values() if hasattr(v, "dag_id") and callable(getattr(v, "test", None)))
    dag_run = dag.test()

    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state, TaskInstance.try_number)
            .where(TaskInstance.dag_id == dag.dag_id, TaskInstance.run_id == dag_run.run_id)
        ).all()
    instances = [
        {"task_id": t, "map_index": m, "state": str(getattr(s, "value", s)), "try_number": n} for t, m, s, n in rows
    ]
    state = str(getattr(dag_run.state, "value", dag_run.state))
    print("RESULT " + json.dumps({"run_id": dag_run.run_id, "state": state, "instances": instances}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
