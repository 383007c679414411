"""``python -m proxy``: the same as the ``chat-stream-proxy`` command."""

import sys

from proxy.cli import main

sys.exit(main())
