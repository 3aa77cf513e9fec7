"""Seed statistics by hand, and the t table against scipy."""

import math

import pytest
from scipy import stats as scipy_stats

from rlad.stats import mean_ci, paired_difference, t975


def test_t_table_matches_scipy():
    for df in range(1, 31):
        assert t975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=6e-4)
    assert t975(200) == pytest.approx(scipy_stats.t.ppf(0.975, 200), abs=0.04)
    with pytest.raises(ValueError, match="at least 2 values"):
        t975(0)


def test_mean_ci_by_hand():
    # values 1, 2, 3: mean 2, sd 1, se 1/sqrt(3), t(2) = 4.303 -> half-width 2.484
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci.mean == 2.0 and ci.half_width == pytest.approx(4.303 / math.sqrt(3)) and ci.n == 3
    assert str(ci) == "2.000 ± 2.484" and not ci.excludes_zero()  # 3 seeds: t(2) makes intervals wide
    assert mean_ci([2.0, 2.5, 3.0]).excludes_zero()  # sd 0.5 -> 2.5 ± 1.242
    assert mean_ci([2.0, 2.5, 3.0]).marked() == "2.500 ± 1.242 *" and ci.marked() == "2.000 ± 2.484"
    one = mean_ci([0.7])
    assert math.isnan(one.half_width) and str(one) == "0.700"


def test_paired_difference_is_the_interval_of_the_differences():
    # after - before = 0.18, 0.20, 0.22 -> mean 0.2, sd 0.02 -> half-width 4.303 * 0.02 / sqrt(3) = 0.0497
    before, after = [0.5, 0.7, 0.2], [0.68, 0.9, 0.42]
    d = paired_difference(after, before)
    assert d.mean == pytest.approx(0.2) and d.half_width == pytest.approx(4.303 * 0.02 / math.sqrt(3))
    assert d.excludes_zero()  # pairing removes the seeds' spread ...
    assert not (mean_ci(after).low > mean_ci(before).high)  # ... which unpaired intervals keep (they overlap)
    with pytest.raises(ValueError, match="differ in number"):
        paired_difference([1.0], [1.0, 2.0])
