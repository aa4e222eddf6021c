"""What the training loop watches: non-finite steps (config.nonfinite) and the log window.

`NonfiniteMonitor` applies the skip / stop policy to the train step's per-step `skipped` flags in
step order and keeps its counts across restarts (they travel in the checkpoint's meta).  The log
window holds the per-step metrics since the last logged step; a checkpoint saved inside a window
carries it, so a resumed run logs the same rows.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from absl import logging


class NonFiniteError(FloatingPointError):
    """Training stopped on non-finite losses or gradients (config.nonfinite); names the steps."""


@dataclasses.dataclass
class NonfiniteMonitor:
    """Applies config.nonfinite to the train step's per-step `skipped` flags, in step order.

    policy 'skip': a skipped step (its update was not applied) is counted and logged; more than
    `max_consecutive_skips` in a row stop the run.  'stop': the first one stops it.  The counts
    travel in the checkpoint's meta, so a resumed run continues the same streak.
    """

    policy: str = "skip"
    max_consecutive_skips: int = 10
    total: int = 0           # skipped steps since the run began
    streak: int = 0          # skipped steps in a row, ending at the last observed step
    streak_start: int = 0    # first step of that streak

    @classmethod
    def from_settings(cls, settings) -> "NonfiniteMonitor":
        """From a `settings.NonfiniteSettings`."""
        return cls(policy=settings.policy, max_consecutive_skips=settings.max_consecutive_skips)

    def state(self) -> dict:
        return {"total": self.total, "streak": self.streak, "streak_start": self.streak_start}

    def restore(self, saved: dict | None):
        saved = saved or {}
        self.total = int(saved.get("total", 0))
        self.streak = int(saved.get("streak", 0))
        self.streak_start = int(saved.get("streak_start", 0))

    def observe(self, first_step: int, skipped, last_saved: int | None):
        """skipped: [n] flags of steps first_step .. first_step + n - 1.  Raises NonFiniteError."""
        kept = ("no checkpoint was written after step "
                f"{last_saved}" if last_saved is not None else "no checkpoint was written")
        for i, flag in enumerate(np.asarray(skipped)):
            s = first_step + i
            if flag < 0.5:
                self.streak = 0
                continue
            self.total += 1
            if self.streak == 0:
                self.streak_start = s
            self.streak += 1
            if self.policy == "stop":
                raise NonFiniteError(
                    f"non-finite loss or gradients at step {s} (its update was not applied) and "
                    f"nonfinite.policy='stop'; {kept}. Lower "
                    "optimizer.learning_rate or check the data, or set "
                    "--config.nonfinite.policy=skip to skip such steps")
            logging.warning("step %d: non-finite loss or gradients, update skipped (%d in a row, "
                            "%d in this run)", s, self.streak, self.total)
            if self.streak > self.max_consecutive_skips:
                raise NonFiniteError(
                    f"steps {self.streak_start}..{s}: {self.streak} consecutive steps with a "
                    "non-finite loss or gradients (more than nonfinite.max_consecutive_skips="
                    f"{self.max_consecutive_skips}); their updates were skipped and the run "
                    f"stopped; {kept}. Lower optimizer.learning_rate or check the data")


def log_row(window: dict) -> dict:
    """The metrics row of a log window {name: [per-step values]}: means over applied steps."""
    skipped = np.asarray(window["skipped"], np.float64) > 0.5
    row = {}
    for name, values in window.items():
        if name not in ("skipped", "learning_rate"):
            v = np.asarray(values, np.float64)[~skipped]
            row[name] = float(np.mean(v)) if v.size else float("nan")
    row["learning_rate"] = float(window["learning_rate"][-1])
    row["skipped_steps"] = int(skipped.sum())
    return row


def window_to_json(window: dict) -> dict:
    return {k: [v if math.isfinite(v) else None for v in vs] for k, vs in window.items()}


def window_from_json(saved) -> dict:
    return {k: [float("nan") if v is None else float(v) for v in vs]
            for k, vs in (saved or {}).items()}
