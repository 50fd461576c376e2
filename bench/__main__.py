"""`python -m bench`: see bench/cli.py for the options."""

from bench.cli import main

raise SystemExit(main())
