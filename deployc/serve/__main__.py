"""`python -m deployc.serve BUNDLE ...` (the same as `deployc serve BUNDLE ...`)."""
from __future__ import annotations

from deployc.serve.cli import main

raise SystemExit(main())
