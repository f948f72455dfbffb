"""`python -m c3llm` is the `c3llm` command."""

import sys

from .cli import main

sys.exit(main())
