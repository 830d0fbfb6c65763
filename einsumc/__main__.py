"""`python -m einsumc` is the `einsumc` command."""
import sys

from .cli import main

sys.exit(main())
