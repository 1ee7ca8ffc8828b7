"""A small live loss plot drawn with QPainter (no matplotlib): training and validation curves."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

TRAINING_COLOR = QColor(80, 170, 255)
VALIDATION_COLOR = QColor(255, 150, 50)


class LossPlot(QWidget):
    """Loss against training step; the y axis is logarithmic when every value is positive."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.training: list[tuple[int, float]] = []
        self.validation: list[tuple[int, float]] = []
        self.total_steps: int | None = None
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setToolTip("Training loss (blue) and validation loss (orange) against step")

    def clear(self) -> None:
        self.training.clear()
        self.validation.clear()
        self.update()

    def add_training(self, step: int, loss: float) -> None:
        if math.isfinite(loss):
            self.training.append((int(step), float(loss)))
            self.update()

    def add_validation(self, step: int, loss: float) -> None:
        if math.isfinite(loss):
            self.validation.append((int(step), float(loss)))
            self.update()

    def _ranges(self) -> tuple[float, float, float, float, bool]:
        points = self.training + self.validation
        steps = [s for s, _ in points]
        values = [v for _, v in points]
        x_max = max(max(steps), self.total_steps or 0, 1)
        log_y = min(values) > 0
        if log_y:
            values = [math.log10(v) for v in values]
        y_min, y_max = min(values), max(values)
        if y_max - y_min < 1e-12:
            y_min, y_max = y_min - 0.5, y_max + 0.5
        return 0.0, float(x_max), y_min, y_max, log_y

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        foreground = self.palette().color(self.foregroundRole())
        area = QRectF(self.rect()).adjusted(48, 18, -10, -22)
        painter.setPen(QPen(foreground, 1))
        painter.drawRect(area)
        if not self.training and not self.validation:
            painter.drawText(area, Qt.AlignmentFlag.AlignCenter, "loss curve appears here")
            painter.end()
            return
        x_min, x_max, y_min, y_max, log_y = self._ranges()

        def to_point(step: float, value: float) -> QPointF:
            y = math.log10(value) if log_y else value
            px = area.left() + (step - x_min) / (x_max - x_min) * area.width()
            py = area.bottom() - (y - y_min) / (y_max - y_min) * area.height()
            return QPointF(px, py)

        for points, color in ((self.training, TRAINING_COLOR), (self.validation, VALIDATION_COLOR)):
            if not points:
                continue
            painter.setPen(QPen(color, 1.6))
            polygon = QPolygonF([to_point(s, v) for s, v in points])
            if len(points) == 1:
                painter.drawEllipse(polygon[0], 2.5, 2.5)
            else:
                painter.drawPolyline(polygon)
            if color == VALIDATION_COLOR:
                for point in polygon:
                    painter.drawEllipse(point, 2.0, 2.0)

        painter.setPen(QPen(foreground, 1))
        top = 10 ** y_max if log_y else y_max
        bottom = 10 ** y_min if log_y else y_min
        painter.drawText(QRectF(0, area.top() - 8, 46, 16), Qt.AlignmentFlag.AlignRight, f"{top:.3g}")
        painter.drawText(QRectF(0, area.bottom() - 8, 46, 16), Qt.AlignmentFlag.AlignRight, f"{bottom:.3g}")
        painter.drawText(QRectF(area.left(), area.bottom() + 4, area.width(), 16),
                         Qt.AlignmentFlag.AlignRight, f"step {int(x_max)}")
        painter.drawText(QRectF(area.left(), area.bottom() + 4, area.width(), 16),
                         Qt.AlignmentFlag.AlignLeft, "0" + ("   (log scale)" if log_y else ""))
        legend_y = 2.0
        painter.setPen(QPen(TRAINING_COLOR, 2))
        painter.drawText(QRectF(area.left(), legend_y, 120, 16), Qt.AlignmentFlag.AlignLeft, "— training")
        painter.setPen(QPen(VALIDATION_COLOR, 2))
        painter.drawText(QRectF(area.left() + 100, legend_y, 120, 16), Qt.AlignmentFlag.AlignLeft, "● validation")
        painter.end()
