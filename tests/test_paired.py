"""The paired comparison's confidence interval, verdict and detectable difference against textbook values."""

import json
import math

import pytest

from mnm.evaluation.paired import paired_interval

# Student (1908), the soporific example: the extra sleep (hours) of two drugs in the same 10 patients.
# Textbook paired t-test: mean difference 1.58, s = 1.2300, t = 4.062 on 9 d.f., 95 % CI [0.7001, 2.4599].
DRUG_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
DRUG_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_interval_equals_the_textbook_paired_t_interval() -> None:
    r = paired_interval([b - a for a, b in zip(DRUG_1, DRUG_2, strict=True)])
    assert r["n"] == 10 and r["mean"] == pytest.approx(1.58)
    assert r["std"] == pytest.approx(1.2300, abs=1e-4)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((0.7001, 2.4599), abs=1e-4)
    assert r["verdict"] == "higher"


def test_hand_made_differences_three_seeds() -> None:
    # d = 1, 2, 3: mean 2, s = 1, t(0.975, 2) = 4.302653, half width 4.302653 / sqrt(3) = 2.484138
    r = paired_interval([1.0, 2.0, 3.0])
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-6)
    assert r["verdict"] == "no difference"  # every seed is positive, yet the interval holds 0
    # detectable at 80 % power: (t(0.975, 2) + t(0.8, 2)) * s / sqrt(n), t(0.8, 2) = 1.060660
    assert r["detectable"] == pytest.approx((4.302653 + 1.060660) / math.sqrt(3), abs=1e-5)


def test_verdict_follows_the_interval() -> None:
    assert paired_interval([0.030, 0.031, 0.029, 0.030])["verdict"] == "higher"
    assert paired_interval([-0.030, -0.031, -0.029])["verdict"] == "lower"
    assert paired_interval([0.06, -0.01, 0.04])["verdict"] == "no difference"


def test_one_seed_gives_no_interval_and_strict_json() -> None:
    r = paired_interval([0.05])
    assert r["verdict"] == "too few seeds" and r["ci_low"] is None and r["std"] is None
    json.dumps(r, allow_nan=False)


@pytest.mark.parametrize("bad", [[], [0.1, float("nan")]])
def test_bad_differences_are_refused(bad: list[float]) -> None:
    with pytest.raises(ValueError, match="paired differences"):
        paired_interval(bad)
