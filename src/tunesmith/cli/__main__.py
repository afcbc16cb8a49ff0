"""`python -m tunesmith.cli`: how `tunesmith serve` starts its workers (the same interpreter,
whatever the PATH holds)."""

import sys

from tunesmith.cli import app

sys.exit(app())
