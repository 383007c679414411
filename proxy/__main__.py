"""``python -m proxy``: the same as the ``chat-stream-proxy`` command."""

import sys

from proxy.cli import main

if __name__ == "__main__":  # importing the module (a tool walking the package) serves nothing
    sys.exit(main())
