"""`python -m thrombus` runs the command-line interface."""

from thrombus.cli import main

raise SystemExit(main())
