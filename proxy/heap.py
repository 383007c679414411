"""The served process's heap: what start-up built is kept out of the cyclic collector's sight,
and the collector runs when there is something to collect.

Start-up leaves some 90,000 objects that live as long as the process (modules, classes,
functions, the app). Every full collection walked all of them: under load one came every half
second and took about 45 ms of the one core, so a tenth of the CPU went to it and every request
in flight then waited for it (bench, non-stream c=16: latency p99 49 ms before, 10 ms after).
``gc.freeze()`` after a collection is the standard library's way out: frozen objects are never
scanned again, and are still freed by reference counting like any other.

A request leaves no reference cycle behind, however it ends (``tests/test_heap.py`` holds
successes, upstream failures, timeouts, refusals and uploads to that): reference counting frees
all of it. Yet the youngest generation was collected whenever 700 more container objects had
been made than freed, and 16 requests in flight hold more than that between them, so the
count crossed 700 again and again: about one collection every ten requests, each walking what
was in flight and finding nothing. That was some 15 µs of every request, a twentieth of its
CPU (bench, non-stream c=16, 15 s: 3,700 young collections, 0.68 s of CPU in all generations;
with a threshold of 10,000: 13 young collections, 0.08 s). A collection walks only the young
objects that are still alive, so a higher threshold makes them rarer without making one longer
than the objects in flight (about 1.5 ms each, measured). Whatever still makes a cycle
(a library's own, an error not seen in the tests) waits longer for its collection: a cycle
that holds a request's body holds it longer too, which is why the tests look for bodies in
what the collector finds. The older generations keep their thresholds.

Only the processes that serve call it (``proxy.cli``, the workers' factory), never
``create_app``: a test process that builds many apps would keep their cycles for good.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000  # Python's default is 700


def freeze_startup() -> None:
    """Collect what start-up threw away, freeze what is left, and raise the threshold of the
    youngest generation."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
