#!/usr/bin/env python3
"""Rerun every row of a run that has not succeeded: the later pass, as a script.

A thin wrapper over ``engine.run.runner.rerun`` (the same function as ``engine rerun``).

Example:
    python scripts/rerun_failed.py run-20261123-101500-ab12 --db engine.db
"""

import sys

from engine.cli.sending import rerun

if __name__ == "__main__":
    sys.exit(rerun.main(sys.argv[1:], prog_name="rerun_failed.py"))
