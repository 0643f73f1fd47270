"""TtftCalibration: learns per-instance step/prefill scales from noisy TTFTs, robust to outliers.

Synthetic, seeded observations: ttft = step_scale * queue_s + prefill_scale * prefill_s, with 10%
log-normal noise and (where said) 10% outliers 3-20x too slow or 3-20x too fast.
"""

import math
import random

import pytest

from fleetgate.router.routing.calibrate import TtftCalibration


def feed(cal: TtftCalibration, rng: random.Random, step: float, prefill: float, n: int, *,
         outliers: float = 0.1, instance: str = "a") -> None:
    for _ in range(n):
        queue_s = math.exp(rng.uniform(math.log(0.005), math.log(0.3)))
        prefill_s = math.exp(rng.uniform(math.log(0.002), math.log(1.0)))
        observed = (step * queue_s + prefill * prefill_s) * math.exp(rng.gauss(0.0, 0.1))
        if rng.random() < outliers:
            observed *= rng.uniform(3, 20) if rng.random() < 0.5 else 1 / rng.uniform(3, 20)
        cal.observe(instance, queue_s, prefill_s, observed)


def test_starts_at_the_profile():
    cal = TtftCalibration()
    assert cal.scales("a") == (1.0, 1.0)


@pytest.mark.parametrize("seed", range(5))
def test_converges_to_the_true_scales_despite_outliers(seed):
    cal = TtftCalibration()
    feed(cal, random.Random(seed), step=2.0, prefill=0.5, n=300)
    step, prefill = cal.scales("a")
    assert step == pytest.approx(2.0, rel=0.15) and prefill == pytest.approx(0.5, rel=0.15)


@pytest.mark.parametrize("seed", range(5))
def test_tracks_an_instance_that_slows_down(seed):
    rng = random.Random(seed)
    cal = TtftCalibration()
    feed(cal, rng, step=1.0, prefill=1.0, n=300)
    feed(cal, rng, step=3.0, prefill=3.0, n=60)  # three times slower from now on
    step, prefill = cal.scales("a")
    assert step == pytest.approx(3.0, rel=0.25) and prefill == pytest.approx(3.0, rel=0.25)


def test_one_wild_outlier_moves_the_scales_little():
    fresh = TtftCalibration()
    fresh.observe("a", 0.01, 0.05, 60.0)  # a 60 s TTFT where 60 ms was expected, as the first evidence
    assert all(abs(s - 1.0) < 0.1 for s in fresh.scales("a"))
    settled = TtftCalibration()
    feed(settled, random.Random(7), step=1.0, prefill=1.0, n=200, outliers=0.0)
    before = settled.scales("a")
    settled.observe("a", 0.01, 0.05, 60.0)
    assert all(abs(after / was - 1.0) < 0.05 for after, was in zip(settled.scales("a"), before))


def test_instances_are_independent_and_can_be_forgotten():
    cal = TtftCalibration()
    feed(cal, random.Random(1), step=2.0, prefill=2.0, n=100, instance="slow")
    assert cal.scales("fast") == (1.0, 1.0)
    assert cal.scales("slow")[1] > 1.5
    cal.forget("slow")
    assert cal.scales("slow") == (1.0, 1.0)


def test_scales_stay_within_bounds():
    cal = TtftCalibration()
    for _ in range(200):
        cal.observe("a", 0.01, 0.01, 1000.0)  # 50000x slower than the profile: the profile is wrong
    assert cal.scales("a") == (10.0, 10.0)


def test_meaningless_observations_are_ignored():
    cal = TtftCalibration()
    cal.observe("a", 0.0, 0.0, 1.0)  # nothing predicted: no information about either scale
    cal.observe("a", 0.01, 0.05, 0.0)
    assert cal.scales("a") == (1.0, 1.0)
