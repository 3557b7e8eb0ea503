"""Speed-of-light math: log-log interpolation, monotone streaming curve, max(memory, compute), geomean."""
import math

import pytest

from lowbit.bench.roofline import (
    Ceilings, asymptotic, geomean, interp_loglog, monotone_times, power_of_two_sizes, sol,
)

MB = 1 << 20


def test_interp_hits_knots_and_is_linear_in_log_log():
    xs, ys = [1.0, 4.0, 16.0], [2.0, 4.0, 16.0]
    for x, y in zip(xs, ys):
        assert interp_loglog(xs, ys, x) == pytest.approx(y)
    assert interp_loglog(xs, ys, 2.0) == pytest.approx(math.sqrt(2.0 * 4.0))  # geometric midpoint
    assert interp_loglog(xs, ys, 8.0) == pytest.approx(8.0)  # slope 1 segment
    # extrapolation continues the end segments
    assert interp_loglog(xs, ys, 64.0) == pytest.approx(64.0)
    assert interp_loglog(xs, ys, 0.25) == pytest.approx(1.0)  # slope 1/2 below the first knot
    assert interp_loglog([4.0, 1.0], [4.0, 2.0], 2.0) == pytest.approx(math.sqrt(8.0))  # unsorted input
    with pytest.raises(ValueError):
        interp_loglog([1.0, 2.0], [1.0], 1.0)


def test_monotone_times_never_lets_fewer_bytes_take_longer():
    assert monotone_times([1, 2, 4, 8], [3.0, 2.0, 5.0, 4.0]) == [2.0, 2.0, 4.0, 4.0]
    assert monotone_times([8, 1], [4.0, 9.0]) == [4.0, 4.0]


def ceil():
    sizes = power_of_two_sizes(MB // 2, 1024 * MB)
    # 2 µs latency + 2 TB/s up to 64 MB, 3 TB/s above: size-matched < asymptotic for small sizes
    times = [2.0 + b / (2e12 if b <= 64 * MB else 3e12) * 1e6 for b in sizes]
    return Ceilings(sizes, times, {"bf16": 800e12})


def test_power_of_two_sizes():
    s = power_of_two_sizes(MB // 2, 1024 * MB)
    assert s[0] == MB // 2 and s[-1] == 1024 * MB and len(s) == 12


def test_sol_is_max_of_memory_and_compute():
    c = ceil()
    b = 16 * MB
    mem = 2.0 + b / 2e12 * 1e6
    small = sol(b, 1e9, c, "bf16")  # compute 1.25 µs < memory
    assert small.memory_us == pytest.approx(mem)
    assert small.compute_us == pytest.approx(1e9 / 800e12 * 1e6)
    assert small.sol_us == pytest.approx(mem) and small.bound == "memory"
    big = sol(b, 1e13, c, "bf16")  # 12.5 ms of math
    assert big.sol_us == pytest.approx(1e13 / 800e12 * 1e6) and big.bound == "compute"
    nopeak = sol(b, 1e13, c, "fp8")  # unmeasured math kind: memory term only
    assert nopeak.compute_us is None and nopeak.sol_us == pytest.approx(mem)


def test_size_matched_sol_is_slower_than_asymptotic_for_one_layer():
    c = ceil()
    assert c.peak_bandwidth == pytest.approx(1024 * MB / (2.0 + 1024 * MB / 3e12 * 1e6) / 1e-6)
    b = 8 * MB
    assert sol(b, 0, c, "bf16").sol_us > asymptotic(b, 0, c, "bf16").sol_us
    assert asymptotic(b, 0, c, "bf16").sol_us == pytest.approx(b / c.peak_bandwidth * 1e6)
    # between knots the memory term is the log-log interpolation of the measured curve
    b = 3 * MB
    t2, t4 = c.stream_time_us(2 * MB), c.stream_time_us(4 * MB)
    assert t2 < sol(b, 0, c, "bf16").memory_us < t4


def test_geomean():
    assert geomean([1.0, 4.0]) == pytest.approx(2.0)
    assert geomean([2.0, None, 8.0, 0.0, float("nan")]) == pytest.approx(4.0)
    assert geomean([]) is None and geomean([None]) is None
