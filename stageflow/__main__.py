"""``python -m stageflow``: the same as the ``stageflow`` command."""

import sys

from stageflow.cli import main

sys.exit(main())
