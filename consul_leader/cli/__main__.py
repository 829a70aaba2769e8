"""``python -m consul_leader.cli``: the ``consul-leader`` command."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
