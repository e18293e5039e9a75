"""`python -m convstream.cli` runs the `convstream` command."""

import sys

from convstream.cli import main

sys.exit(main())
