"""The worker's warm shutdown, as the training loop sees it.

``STOPPING`` is set on the worker's warm shutdown (worker/tasks.py). A running job then
stops at its next step and goes back to the broker at once (it resumes from its last
epoch checkpoint elsewhere) instead of holding an unacknowledged message until Redis's
visibility timeout (hours) hands it out again.
"""

from __future__ import annotations

import threading

STOPPING = threading.Event()

# Jobs whose message this worker process holds right now (tasks.py): the sweeper
# never re-queues them.
HELD_HERE: set[str] = set()


class WorkerStopping(Exception):
    """The worker is shutting down: hand the job back to the broker."""
