"""``python -m mailsvc``: the ``mailsvc`` command, for where the script is not on PATH (and the service's own
worker process, started with the interpreter that runs the service)."""

import sys

from .cli import main

sys.exit(main())
