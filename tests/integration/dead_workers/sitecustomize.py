"""Test-only: worker processes that die as they start, while a control file exists.

A server started with this directory on PYTHONPATH and DEAD_WORKERS_CONTROL naming a file imports
this module at start-up, and so does each process its pool spawns. A spawned process (multiprocessing
marks it with --multiprocessing-fork) exits at once while the file exists: the pool's replacements
die as fast as it starts them, as they would on a machine that cannot run them, until it is removed.
"""

from __future__ import annotations

import os
import sys

CONTROL = os.environ.get("DEAD_WORKERS_CONTROL")

if CONTROL is not None and "--multiprocessing-fork" in sys.argv and os.path.exists(CONTROL):
    os._exit(1)
