"""``python -m benchmarks``: run the suite and print the table."""

from benchmarks._main import main

raise SystemExit(main())
