"""`python -m convstream.dashboard`: the same as `convstream dashboard`."""

from __future__ import annotations

import sys

from convstream.dashboard.cli import run_dashboard

sys.exit(run_dashboard())
