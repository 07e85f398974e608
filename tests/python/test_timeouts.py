"""What ``timeout=`` means in get(), put() and create(): seconds; 0 answers at
once; None, inf and values beyond 10 years wait forever (no overflow into "at
once"); NaN, negative values, bools and non-numbers raise InvalidArgument
before anything is sent to the daemon."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import tensorshm
from tensorshm._client import _FOREVER_AFTER_S, _timeout_ms

DELAY = 0.3  # how long the producer thread waits before it puts


def put_later(name: str, value: int) -> threading.Thread:
    """Puts np.full(2, value) as ``name`` from another thread (and connection)
    after DELAY seconds; a waiting get() holds up its own client's other calls."""

    def put() -> None:
        time.sleep(DELAY)
        with tensorshm.connect() as producer:
            producer.put(name, np.full(2, value, dtype=np.int64))

    t = threading.Thread(target=put)
    t.start()
    return t


@pytest.mark.parametrize("timeout", [1e10, float("inf"), 10**30, np.float64(1e300), None],
                         ids=["1e10", "inf", "int_1e30", "numpy_1e300", "none"])
def test_a_get_with_a_huge_or_infinite_timeout_waits_for_the_name(client, name, timeout):
    producer = put_later(name, 5)
    start = time.monotonic()
    arr = client.get(name, timeout=timeout)
    waited = time.monotonic() - start
    producer.join()
    assert arr.tolist() == [5, 5]
    assert waited >= DELAY * 0.8  # it waited for the put instead of giving up at once


def test_the_extension_waits_for_the_name_when_the_deadline_would_overflow_the_clock(client, name):
    # The C++ side on its own: 2**63 - 1 ms past now() does not fit in
    # steady_clock's int64 nanoseconds, so it must mean "forever", not "at once".
    producer = put_later(name, 6)
    lease = client._c.get(name, 0, 2**63 - 1)
    producer.join()
    assert np.asarray(lease).tolist() == [6, 6]


def test_a_get_whose_timeout_runs_out_on_a_missing_name_raises_timeout(client, name):
    start = time.monotonic()
    with pytest.raises(tensorshm.Timeout, match="gave up after waiting 300 ms"):
        client.get(name + "/never", timeout=0.3)
    assert time.monotonic() - start >= 0.25
    with pytest.raises(tensorshm.NotFound):
        client.get(name + "/never", timeout=0)  # 0: answer at once


BAD = [float("nan"), -1, -0.001, float("-inf"), True, False, "1", [1], np.nan]
BAD_IDS = ["nan", "minus_1", "minus_1ms", "minus_inf", "true", "false", "str", "list", "numpy_nan"]


@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
def test_a_bad_timeout_raises_invalid_argument_naming_it_before_a_get_is_sent(client, name, bad):
    client.put(name, np.zeros(1))
    # The name exists: had the get been sent, it would have returned the object.
    with pytest.raises(tensorshm.InvalidArgument, match="timeout must be") as e:
        client.get(name, timeout=bad)
    assert repr(bad) in str(e.value)
    with pytest.raises(tensorshm.InvalidArgument, match="timeout must be"):
        client.get_object(name, timeout=bad)


@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
def test_a_bad_timeout_raises_invalid_argument_before_a_put_or_create_is_sent(client, name, bad):
    open_creates = client.stats().open_creates
    with pytest.raises(tensorshm.InvalidArgument, match="timeout must be"):
        client.put(name, np.zeros(1), timeout=bad)
    with pytest.raises(tensorshm.InvalidArgument, match="timeout must be"):
        client.create(name, shape=(1,), dtype="uint8", timeout=bad)
    with pytest.raises(tensorshm.NotFound):
        client.stat(name)  # neither reached the daemon
    assert client.stats().open_creates == open_creates


@pytest.mark.parametrize("timeout", [None, float("inf"), 1e10, 0, 2.5])
def test_puts_and_creates_with_room_in_the_pool_succeed_whatever_the_timeout(client, name, timeout):
    assert client.put(name, np.arange(3), timeout=timeout).version > 0
    with client.create(name, shape=(2,), dtype="int8", timeout=timeout) as buf:
        buf[...] = 1
    assert client.get(name).tolist() == [1, 1]


def test_timeouts_up_to_10_years_are_kept_and_longer_ones_wait_forever():
    assert _FOREVER_AFTER_S == 10 * 365 * 24 * 3600
    assert _timeout_ms(0) == 0
    assert _timeout_ms(0.25) == 250
    assert _timeout_ms(_FOREVER_AFTER_S) == _FOREVER_AFTER_S * 1000
    assert _timeout_ms(_FOREVER_AFTER_S + 1) == -1
    assert _timeout_ms(float("inf")) == -1
    assert _timeout_ms(None) == -1
