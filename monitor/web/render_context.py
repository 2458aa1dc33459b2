"""What a panel builder gets besides the monitor's view: the render's cwd and gauge history."""

from __future__ import annotations

from dataclasses import dataclass

from monitor.web.history import DEFAULT_WINDOW_S, GaugeSample

# A fresh history would otherwise squeeze its few samples into the right edge of ten minutes.
MIN_SHOWN_WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class RenderContext:
    """What a builder needs besides the view: where paths are relative to, recent gauge samples."""

    cwd: str = ""
    samples: tuple[GaugeSample, ...] = ()
    samples_now: float = 0.0  # the history's clock at render time
    window_s: float = DEFAULT_WINDOW_S

    @property
    def shown_window_s(self) -> float:
        """The sparklines' time span: what the history holds, at least a minute, at most the window."""
        held = self.samples_now - self.samples[0].at if self.samples else 0.0
        return min(self.window_s, max(MIN_SHOWN_WINDOW_S, held))
