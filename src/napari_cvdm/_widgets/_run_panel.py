"""The run half of a dock widget: start/stop buttons, progress bar, status line and the task behind them.

The Reconstruct and Train widgets each own one :class:`RunPanel`; it starts their
work as a :class:`~._workers.BackgroundTask`, keeps the buttons in step with it
(start buttons while idle, the stop button while running), shows progress, and
resets itself before handing the :class:`~._workers.Outcome` to the widget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from napari.utils import notifications
from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton, QSpinBox, QWidget

from ._workers import BackgroundTask, Outcome


def spin_box(minimum: int, maximum: int, value: int, tooltip: str) -> QSpinBox:
    """An integer spin box with its range, value and tooltip."""
    spin = QSpinBox()
    spin.setRange(minimum, maximum)
    spin.setValue(int(value))
    spin.setToolTip(tooltip)
    return spin


class RunPanel:
    """One long-running action of ``owner``: its buttons, progress bar, status line and task.

    ``busy``: the warning when asked to start while running; ``stopping``: the status
    shown once stop is pressed; ``on_buttons``: called after the buttons are updated
    (for buttons with conditions of their own, e.g. Resume).
    """

    def __init__(self, owner: QWidget, start_buttons: Sequence[QPushButton], stop_button: QPushButton, *,
                 busy: str, stopping: str, on_buttons: Callable[[], None] | None = None):
        self.owner, self.start_buttons, self.stop_button = owner, list(start_buttons), stop_button
        self.busy, self.stopping, self.on_buttons = busy, stopping, on_buttons
        self.task: BackgroundTask | None = None
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        stop_button.setEnabled(False)
        stop_button.clicked.connect(self.stop)

    @property
    def running(self) -> bool:
        return self.task is not None and self.task.running

    def refuse_if_running(self) -> bool:
        """Whether something runs already (then says so)."""
        if self.running:
            notifications.show_warning(self.busy)
        return self.running

    def launch(self, function: Callable[..., Any], description: str, status: str, *,
               on_done: Callable[[Outcome], None], on_progress: Callable[[int, int], None] | None = None,
               on_report: Callable[[Any], None] | None = None) -> None:
        """Run ``function(progress, should_stop[, report])`` in the background (see BackgroundTask)."""
        def done(outcome: Outcome) -> None:
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(0)
            self.update_buttons()
            on_done(outcome)

        self.task = BackgroundTask(function, description, on_done=done, on_progress=on_progress,
                                   on_report=on_report, with_report=on_report is not None)
        self.owner.destroyed.connect(self.task.abandon)  # closing the viewer stops the work
        self.progress_bar.setRange(0, 0)
        self.status_label.setText(status)
        self.task.start()
        self.update_buttons()

    def stop(self) -> None:
        """Ask the running work to stop at its next check."""
        if self.running:
            self.task.stop()
            self.stop_button.setEnabled(False)
            self.status_label.setText(self.stopping)

    def show_progress(self, done: int, total: int, text: str) -> None:
        """Bar at ``done`` of ``total`` and the status ``text`` (kept at 'stopping' once stop is pressed)."""
        if self.task is not None and self.task.stop_requested:
            return
        self.progress_bar.setRange(0, max(int(total), 1))
        self.progress_bar.setValue(int(done))
        self.status_label.setText(text)

    def succeeded(self, text: str) -> None:
        self.progress_bar.setValue(1)
        self.status_label.setText(text)

    def failed(self, message: str) -> None:
        """One notification and the same line as the status."""
        self.status_label.setText(message)
        notifications.show_error(message)

    def update_buttons(self) -> None:
        running = self.running
        for button in self.start_buttons:
            button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        if self.on_buttons is not None:
            self.on_buttons()
