"""`python -m toolroute` (and `accelerate launch -m toolroute ...`) runs the CLI."""

from toolroute.cli import main

raise SystemExit(main())
