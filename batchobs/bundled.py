"""Top-level directories of the checkout that the commands read: the dbt project, the sample
DAGs, the Prometheus config.

A wheel carries them as package data of this package (pyproject.toml maps ``dbt/``
to ``batchobs/dbt/``, and ``examples/`` and ``prometheus/`` likewise); a checkout
(the editable install of ``make setup``) has them beside the package.  Found
relative to the package, so they move with it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["bundled_dir"]

_CHECKOUT = Path(__file__).resolve().parents[1]


def bundled_dir(name: str) -> Path:
    """The directory ``name`` (``dbt``, ``examples`` or ``prometheus``) of this installation.

    In a checkout (``pyproject.toml`` beside the package) the top-level directory;
    else the package data, whether or not it is there (the caller names what is missing).
    """
    packaged = Path(str(resources.files(__name__.rpartition(".")[0]) / name))
    if not packaged.is_dir() and (_CHECKOUT / "pyproject.toml").is_file():
        return _CHECKOUT / name
    return packaged
