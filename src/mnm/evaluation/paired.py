"""Paired comparison of two arms over seeds: the mean difference, its Student-t confidence interval, the
verdict the interval gives, and the smallest true difference the run could have detected.

With ``n`` paired differences ``d`` (arm − against, one per seed), mean ``m`` and sample std ``s``:

- the ``1 − α`` confidence interval is ``m ± t(1 − α/2, n − 1) · s / √n``;
- the verdict is ``higher`` when the interval lies above 0, ``lower`` when below, ``no difference`` when
  it contains 0, and ``too few seeds`` below two seeds;
- the detectable difference is the true mean difference that a two-sided paired t-test at level ``α``
  finds with probability ``power`` (0.8), at the seeds' observed spread:
  ``(t(1 − α/2, n − 1) + t(power, n − 1)) · s / √n``. A smaller true gain could have gone unseen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
POWER = 0.8
VERDICTS = ("higher", "lower", "no difference", "too few seeds")


def paired_interval(differences: Sequence[float], confidence: float = CONFIDENCE,
                    power: float = POWER) -> dict[str, Any]:
    """Mean, std, n, values, the confidence interval (``ci_low``, ``ci_high``), ``detectable`` and ``verdict``
    of paired differences; values that need two seeds are ``None`` with fewer."""
    d = np.asarray(differences, dtype=float)
    if d.ndim != 1 or len(d) == 0 or not np.isfinite(d).all():
        raise ValueError(f"paired differences must be a non-empty list of finite numbers, got {list(differences)}")
    n = len(d)
    out: dict[str, Any] = {"mean": float(d.mean()), "std": None, "n": n, "values": [float(v) for v in d],
                           "confidence": confidence, "ci_low": None, "ci_high": None, "detectable": None,
                           "verdict": "too few seeds"}
    if n < 2:
        return out
    std = float(d.std(ddof=1))
    sem = std / math.sqrt(n)
    t_crit = float(stats.t.ppf(1 - (1 - confidence) / 2, n - 1))
    low, high = out["mean"] - t_crit * sem, out["mean"] + t_crit * sem
    verdict = "higher" if low > 0 else "lower" if high < 0 else "no difference"
    return out | {"std": std, "ci_low": low, "ci_high": high, "verdict": verdict,
                  "detectable": (t_crit + float(stats.t.ppf(power, n - 1))) * sem}
