"""Dashboard formatting: durations, ages, bucket labels, paths, quantiles, sparklines, sites."""

from __future__ import annotations

import math

import pytest

from monitor.state.sites import Frame
from monitor.web import formatting
from tests.web.snapshots import BOUNDS, NOW, SITE


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "—"),
        (0.00004, "< 0.1 ms"),
        (0.0004, "0.4 ms"),
        (0.012, "12 ms"),
        (0.9996, "1.0 s"),
        (1.23, "1.2 s"),
        (59.96, "1 min 00 s"),
        (125.0, "2 min 05 s"),
        (3720.0, "1 h 02 min"),
        (93600.0, "1 d 2 h"),
        (math.inf, "∞"),
    ],
)
def test_duration(seconds: float | None, text: str) -> None:
    assert formatting.duration(seconds) == text


def test_ago_bound_label_and_short_path() -> None:
    assert formatting.ago(NOW - 3, NOW) == "3.0 s ago"
    assert formatting.ago(None, NOW) == "never"
    assert formatting.bound_label(0.005) == "≤ 5 ms"
    assert formatting.bound_label(math.inf, BOUNDS) == "> 10.0 s"
    assert formatting.short_path("/srv/app/routes.py", "/srv") == "app/routes.py"
    assert formatting.short_path("/x/lib/site-packages/pkg/m.py", "/srv") == "pkg/m.py"
    assert formatting.short_path("<string>", "/srv") == "<string>"


def test_quantile_of_bucket_counts() -> None:
    assert formatting.quantile(BOUNDS, (0,) * 10, 0.95) is None
    # 100 samples: 90 under 1 ms, 10 under 50 ms -> p95 falls in the 50 ms bucket.
    assert (
        formatting.quantile(BOUNDS, (90, 90, 90, 100, 100, 100, 100, 100, 100, 100), 0.95) == 0.05
    )


def test_sparkline_places_points_by_age_and_scales_to_the_peak() -> None:
    spark = formatting.sparkline(
        [(940.0, 0.0), (970.0, 2.0), (1000.0, 4.0)], window_s=60, now=1000.0, title="t",
        width=120, height=28,
    )  # fmt: skip
    assert spark is not None
    assert spark.line == "0.0,26.0 60.0,14.0 120.0,2.0"
    assert spark.area.startswith("0.0,28 ") and spark.area.endswith(" 120.0,28")
    assert formatting.sparkline([(1.0, 1.0)], window_s=60, now=1.0, title="t") is None
    flat = formatting.sparkline([(990.0, 0.0), (1000.0, 0.0)], window_s=60, now=1000.0, title="t")
    assert flat is not None and flat.line.endswith(",26.0")


def test_site_summary_skips_generated_code() -> None:
    frames = formatting.site_frames((Frame("<generated wrapper>", 2, "_go", "x"), *SITE), "/srv")
    assert formatting.site_summary(frames) == "app/routes.py:42"
    assert formatting.site_summary(()) == "site not captured"
