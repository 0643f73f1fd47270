"""Per-instance TTFT calibration: learn how far each instance is from its GPU profile, online.

The estimate (estimate.py) is `ttft = queue_s + prefill_s` with `queue_s = steps * step_s` and
`prefill_s = work_tokens / prefill_tokens_per_s`, both from the instance's `GpuProfile`. A real
instance differs from its profile (another model, quantisation, a noisy neighbour, a slow host),
and differently per instance, so we learn two scales per instance from what it did:

    observed_ttft ~= step_scale * queue_s + prefill_scale * prefill_s

`step_scale` multiplies the profile's step time, `prefill_scale` divides its prefill rate. Both
start at 1 (the profile), so an instance with no history is estimated exactly as before.

Why this fit (decided here): recursive least squares over the two scales, O(1) per observation
(a 2x2 covariance), with
- relative residuals: each observation is divided by its prediction, so a 30 s queue does not
  outweigh a hundred 50 ms prefills and the noise is about the same size everywhere;
- Huber weights against a running robust scale of those residuals: an observation k scales away
  counts as if it were only k scales away, so one wild TTFT (a GC pause, a stuck socket) moves
  the scales little, while a lasting change raises the residual scale within a few requests and
  then counts fully;
- forgetting (`forgetting` 0.9: about the last 10 requests weigh most) so a slowed instance is
  learned within tens of requests; each scale's variance is capped at the prior's (relative to
  the scale), so a long run of look-alike requests cannot wind it up and let one request throw
  the scales;
- scales clipped to [1/10, 10] of the profile: past that the profile is wrong, not the instance
  (give the fleet file a custom GPU profile).

Feeding it: record the chosen instance's (queue_s, prefill_s) when routing, the dispatch time in
on_dispatch, and observe `first token - dispatch` in on_first_token of a streamed request sent to
that same instance (a fallback or a non-streamed answer is not what was estimated).
"""

from __future__ import annotations

import math

_MIN_SCALE, _MAX_SCALE = 0.1, 10.0
_PRIOR_VAR = 0.25  # the scales' prior variance: one standard deviation is half the profile's value
_HUBER_K = 2.0  # residuals beyond this many robust scales are down-weighted
_RESIDUAL_SCALE0 = 0.2  # prior spread of relative residuals (20%)
_RESIDUAL_SCALE_MIN, _RESIDUAL_SCALE_MAX = 0.02, 10.0
_RESIDUAL_SCALE_RATE = 0.2  # EWMA rate of the residual scale
_MAD_TO_SIGMA = 1.25  # mean absolute deviation -> standard deviation of a normal


class _Fit:
    """One instance's scales, their covariance and the robust residual scale."""

    __slots__ = ("step", "prefill", "p11", "p12", "p22", "residual_scale")

    def __init__(self) -> None:
        self.step = self.prefill = 1.0
        self.p11, self.p12, self.p22 = _PRIOR_VAR, 0.0, _PRIOR_VAR
        self.residual_scale = _RESIDUAL_SCALE0

    def update(self, queue_s: float, prefill_s: float, observed_s: float, forgetting: float) -> None:
        predicted = self.step * queue_s + self.prefill * prefill_s
        if predicted <= 0.0:
            return
        x1, x2 = queue_s / predicted, prefill_s / predicted
        error = observed_s / predicted - 1.0  # relative residual
        size = abs(error)
        limit = _HUBER_K * self.residual_scale
        weight = 1.0 if size <= limit else limit / size
        scale = self.residual_scale + _RESIDUAL_SCALE_RATE * (
            min(size, 3.0 * self.residual_scale) * _MAD_TO_SIGMA - self.residual_scale)
        self.residual_scale = min(max(scale, _RESIDUAL_SCALE_MIN), _RESIDUAL_SCALE_MAX)
        px1 = self.p11 * x1 + self.p12 * x2
        px2 = self.p12 * x1 + self.p22 * x2
        denominator = forgetting + weight * (x1 * px1 + x2 * px2)
        g1, g2 = weight * px1 / denominator, weight * px2 / denominator
        self.step = min(max(self.step + g1 * error, _MIN_SCALE), _MAX_SCALE)
        self.prefill = min(max(self.prefill + g2 * error, _MIN_SCALE), _MAX_SCALE)
        p11 = (self.p11 - g1 * px1) / forgetting
        p12 = (self.p12 - g1 * px2) / forgetting
        p22 = (self.p22 - g2 * px2) / forgetting
        # anti-windup: each scale's variance stays under the prior's, relative to the scale (D P D
        # with D diagonal keeps P positive definite)
        cap1, cap2 = _PRIOR_VAR * self.step * self.step, _PRIOR_VAR * self.prefill * self.prefill
        d1 = math.sqrt(cap1 / p11) if p11 > cap1 else 1.0
        d2 = math.sqrt(cap2 / p22) if p22 > cap2 else 1.0
        self.p11, self.p12, self.p22 = p11 * d1 * d1, p12 * d1 * d2, p22 * d2 * d2


class TtftCalibration:
    """Per-instance scales of the profile's step time and prefill time, learned from observed TTFTs."""

    def __init__(self, forgetting: float = 0.9) -> None:
        if not 0.5 <= forgetting <= 1.0:
            raise ValueError("forgetting must be in [0.5, 1]")
        self.forgetting = forgetting
        self._fits: dict[str, _Fit] = {}

    def observe(self, instance: str, queue_s: float, prefill_s: float, observed_s: float) -> None:
        """`instance` gave a first token `observed_s` after dispatch, where the uncalibrated profile
        predicted `queue_s` (steps x step time) plus `prefill_s` (work tokens / prefill rate)."""
        if observed_s <= 0.0 or queue_s < 0.0 or prefill_s < 0.0 or queue_s + prefill_s <= 0.0:
            return
        fit = self._fits.get(instance)
        if fit is None:
            fit = self._fits[instance] = _Fit()
        fit.update(queue_s, prefill_s, observed_s, self.forgetting)

    def scales(self, instance: str) -> tuple[float, float]:
        """(step_scale, prefill_scale) of `instance`; (1, 1) before any observation."""
        fit = self._fits.get(instance)
        return (fit.step, fit.prefill) if fit is not None else (1.0, 1.0)

    def forget(self, instance: str) -> None:
        """Drop what was learned about `instance` (it left the pool)."""
        self._fits.pop(instance, None)
