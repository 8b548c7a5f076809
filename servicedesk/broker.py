"""kombu's filesystem transport, the embedded default broker, made to let a worker stop
promptly (CELERY_BROKER_TRANSPORT names it; servicedesk/configuration.py)."""

from __future__ import annotations

from queue import Empty
from time import monotonic, sleep
from typing import Any

from kombu.transport import filesystem


def worker_asked_to_stop() -> bool:
    # Imported here: the web and the commands use this transport too, and never run a worker.
    from celery.worker import state

    # The flags hold the exit code, 0 included: compared by identity, as Celery does.
    return any(
        flag is not None and flag is not False
        for flag in (state.should_stop, state.should_terminate)
    )


class FilesystemTransport(filesystem.Transport):
    """A worker on this transport runs Celery's blocking loop, which looks for a stop request
    only between two drain_events(timeout=2.0) and drains once more after seeing one: up to
    4 s before a warm shutdown even begins, most of the 5 s honcho (`make run`) grants before
    it kills. Here a drain also ends at the next look at the queue folder once the worker was
    asked to stop; a message found is delivered first, as before."""

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        started = monotonic()
        interval = self.polling_interval
        if timeout and interval and interval > timeout:
            interval = timeout
        while True:
            try:
                self.cycle.get(self._deliver, timeout=timeout)
            except Empty:
                timed_out = timeout is not None and monotonic() - started >= timeout
                if timed_out or worker_asked_to_stop():
                    raise TimeoutError() from None
                if interval is not None:
                    sleep(interval)
            else:
                return
