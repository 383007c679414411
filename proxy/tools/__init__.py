"""The instruments, which share nothing with the request path: ``probe``, ``inspect`` and the
playground page."""
