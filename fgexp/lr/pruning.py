"""The paper's pruning rule for the Propulate backend (Appendix B).

Plain Python, so it is tested without MPI; `surrogate_factory` wraps it into a Propulate
surrogate (propulate is imported only there).
"""
from __future__ import annotations

import math
from collections.abc import Mapping


class PruningRule:
    """The paper's pruning rule, as plain Python (wrapped into a Propulate surrogate below).

    A run is cancelled once its interim loss has exceeded `factor` times the best finished
    run's interim loss at the same step for more than `fraction` of its steps. "Its steps" is
    the `horizon` (interim losses in a full run) when the task tells it, else the length of
    the best run. Interim losses beyond the best run's last one compare against its last.
    """

    def __init__(self, factor: float = 2.0, fraction: float = 0.05, horizon: int | None = None):
        self.factor, self.fraction, self.horizon = factor, fraction, horizon
        self.best_loss = math.inf
        self.best_curve: list[float] = []
        self._curve: list[float] = []
        self._violations = 0
        self._cancelled = False

    def start_run(self, ind=None) -> None:
        self._curve, self._violations, self._cancelled = [], 0, False

    def cancel(self, loss: float) -> bool:
        step = len(self._curve)
        self._curve.append(float(loss))
        if not self.best_curve:
            return False
        reference = self.best_curve[min(step, len(self.best_curve) - 1)]
        if not loss <= self.factor * reference:  # NaN counts as a violation
            self._violations += 1
        allowed = self.fraction * (self.horizon or len(self.best_curve))
        self._cancelled = self._violations > allowed
        return self._cancelled

    def update(self, loss: float) -> None:
        """A run finished with final `loss`; a better complete run becomes the reference."""
        if not self._cancelled and math.isfinite(loss) and self._curve:
            self.merge({"loss": float(loss), "curve": self._curve})

    def data(self) -> dict:
        return {"loss": self.best_loss, "curve": list(self.best_curve)}

    def merge(self, data: Mapping) -> None:
        """Keep the better of two references; ties break on the curve, so merging commutes."""
        if (data["loss"], list(data["curve"])) < (self.best_loss, self.best_curve):
            self.best_loss, self.best_curve = float(data["loss"]), list(data["curve"])


def surrogate_factory(factor: float, fraction: float, horizon: int | None):
    """A factory of Propulate surrogates that apply PruningRule."""
    from propulate.surrogate import Surrogate

    class PruningSurrogate(PruningRule, Surrogate):
        def __init__(self):
            PruningRule.__init__(self, factor, fraction, horizon)

    return PruningSurrogate
