"""`python -m core <command>`: see `python -m core --help`."""
from .cli.main import main

raise SystemExit(main())
