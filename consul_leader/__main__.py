"""``python -m consul_leader``: the ``consul-leader`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
