"""Framework integrations. Each module imports its framework lazily at import time of
the module itself, so ``import quorate`` never needs Django, DRF, Channels or Starlette:

- :mod:`quorate.contrib.django` -- settings-driven clients, client IP through trusted
  proxies, a sync+async rate-limit middleware with RateLimit headers and JSON 429s;
- :mod:`quorate.contrib.drf` -- throttle classes (anon / user / scoped) and one class
  that charges several policies all or none;
- :mod:`quorate.contrib.channels` -- connection-level middleware (close code 4029) and
  a consumer mixin / decorator for message-level limits;
- :mod:`quorate.contrib.asgi` -- pure ASGI middleware for Starlette/FastAPI with
  separate read and write limits.

Shared, framework-free pieces live in :mod:`quorate.contrib.common`.
"""
