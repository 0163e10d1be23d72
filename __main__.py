"""`python -m toolroute` (and `accelerate launch -m toolroute ...`) runs the CLI."""

from toolroute.runtime.cli import main

raise SystemExit(main())
