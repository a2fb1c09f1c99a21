"""``python -m warehouse serve ...``: the embedded server without the full CLI's imports."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(["warehouse", *sys.argv[1:]]))
