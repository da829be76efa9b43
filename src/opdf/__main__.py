"""`python -m opdf` runs the same CLI as the `opdf` console script."""

from opdf.cli import main

raise SystemExit(main())
