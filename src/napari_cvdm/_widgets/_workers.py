"""Run long work off the GUI thread with progress, a stop flag and no escaping exception.

:class:`BackgroundTask` runs ``function(progress, should_stop)`` in a napari
worker thread. ``progress(done, total)`` may be called from that thread: it is
relayed through a queued Qt signal to the main thread, where it drives a
progress bar in napari's activity dock and the widget's own callback.
``should_stop()`` reads a thread-safe flag set by :meth:`BackgroundTask.stop`.
Whatever the function returns or raises comes back on the main thread as an
:class:`Outcome`, so a failure becomes a notification rather than an exception
in the event loop.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import FunctionWorker, create_worker
from napari.utils import progress as napari_progress
from qtpy.QtCore import QObject, Signal

from ..errors import Cancelled

#: Shortest time between two progress updates on screen (s).
PROGRESS_INTERVAL_S = 0.1


@dataclass
class Outcome:
    """What a background function produced: its return value, or the exception it raised."""

    value: Any = None
    error: BaseException | None = None
    traceback: str = ""


class _StoppableWorker(FunctionWorker):
    """A function worker whose ``quit`` (napari's cancel, or the viewer closing) also sets the stop flag."""

    stop_callback: Callable[[], None] | None = None

    def quit(self) -> None:
        super().quit()
        if self.stop_callback is not None:
            self.stop_callback()


class _ProgressRelay(QObject):
    """Lives in the main thread; signals emitted from a worker arrive queued."""

    progressed = Signal(int, int)
    reported = Signal(object)


class BackgroundTask:
    """One run of ``function(progress, should_stop)`` in a worker thread.

    ``on_progress(done, total)`` and ``on_report(obj)`` (objects passed to the
    ``report`` argument when the function accepts one) and ``on_done(outcome)``
    are called on the main thread. ``description`` titles the activity-dock bar.
    """

    def __init__(self, function: Callable[..., Any], description: str, *,
                 on_done: Callable[[Outcome], None],
                 on_progress: Callable[[int, int], None] | None = None,
                 on_report: Callable[[Any], None] | None = None,
                 with_report: bool = False):
        self._function = function
        self._description = description
        self._on_done = on_done
        self._on_progress = on_progress
        self._stop_flag = threading.Event()
        self._relay = _ProgressRelay()
        self._relay.progressed.connect(self._show_progress)
        if on_report is not None:
            self._relay.reported.connect(
                lambda report: None if self._abandoned or not self._running else on_report(report))
        self._with_report = with_report
        self._bar: napari_progress | None = None
        self._shown_at = -float("inf")
        self._running = False
        self._abandoned = False
        self.worker = None

    @property
    def running(self) -> bool:
        return self._running

    @property
    def stop_requested(self) -> bool:
        return self._stop_flag.is_set()

    def start(self) -> None:
        self._running = True
        self._bar = napari_progress(total=0, desc=self._description)
        self.worker = create_worker(self._run_guarded, _start_thread=False, _ignore_errors=True,
                                    _worker_class=_StoppableWorker)
        self.worker.stop_callback = self.stop
        self.worker.returned.connect(self._finish)
        self.worker.finished.connect(self._on_worker_finished)
        self.worker.start()

    def stop(self) -> None:
        """Ask the function to stop; it does so at its next ``should_stop()`` check."""
        self._stop_flag.set()

    def abandon(self, *_) -> None:
        """Stop and drop the callbacks: for when the widget that started the task is gone."""
        self._abandoned = True
        self._stop_flag.set()

    def _run_guarded(self) -> Outcome:
        kwargs = {"progress": self._relay.progressed.emit, "should_stop": self._stop_flag.is_set}
        if self._with_report:
            kwargs["report"] = self._relay.reported.emit
        try:
            return Outcome(value=self._function(**kwargs))
        except Exception as exc:  # handed to the main thread, never raised in the event loop
            return Outcome(error=exc, traceback=traceback.format_exc())

    def _on_worker_finished(self) -> None:
        if self._running:  # no result was delivered: the worker was aborted (e.g. the viewer closed)
            self._finish(Outcome(error=Cancelled("the work was aborted")))

    def _show_progress(self, done: int, total: int) -> None:
        if not self._running:
            return
        now = time.monotonic()
        if done < total and now - self._shown_at < PROGRESS_INTERVAL_S:
            return  # fast steps: a bar moved 10 times a second is smooth, and each move costs GUI time
        self._shown_at = now
        if self._on_progress is not None and not self._abandoned:
            self._on_progress(done, total)
        # Last: updating napari's activity bar processes pending events, which may deliver the result.
        if self._bar is not None:
            if self._bar.total != total:
                self._bar.total = total
            self._bar.update(done - self._bar.n)

    def _finish(self, outcome: Outcome) -> None:
        self._running = False
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if not self._abandoned:
            self._on_done(outcome)


class ConnectionSet:
    """Connections from long-lived emitters (the registry, the viewer) to one widget.

    Disconnects them all when the widget's C++ object is destroyed (e.g. when the
    viewer closes), so no callback reaches a deleted widget.
    """

    def __init__(self, widget: QObject):
        self._connections: list = []
        widget.destroyed.connect(self.disconnect_all)

    def connect(self, emitter, callback) -> None:
        emitter.connect(callback)
        self._connections.append((emitter, callback))

    def disconnect(self, emitter, callback) -> None:
        """Disconnect one connection made through :meth:`connect` (e.g. of a removed layer)."""
        for index, (known_emitter, known_callback) in enumerate(self._connections):
            if known_emitter is emitter and known_callback == callback:
                del self._connections[index]
                emitter.disconnect(callback)
                return

    def disconnect_all(self, *_) -> None:
        connections, self._connections = self._connections, []
        for emitter, callback in connections:
            try:
                emitter.disconnect(callback)
            except Exception:  # already gone with its owner
                pass
