"""The lease behind an array lives exactly as long as the array and its views."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import tensorshm
from tensorshm import _tensorshm


def leases(c: tensorshm.Client) -> int:
    return c.stats().leases


def test_the_lease_is_released_when_the_last_view_is_collected(client, name):
    client.put(name, np.arange(100, dtype=np.float32))
    before = leases(client)
    arr = client.get(name)
    assert leases(client) == before + 1
    view = arr[10:20]
    view2 = view.reshape(2, 5).T
    lease = weakref.ref(arr.base)
    assert isinstance(lease(), _tensorshm.Lease)
    del arr
    gc.collect()
    assert lease() is not None and leases(client) == before + 1  # the views still hold it
    del view
    gc.collect()
    assert lease() is not None and leases(client) == before + 1
    assert view2.sum() == sum(range(10, 20))
    del view2
    gc.collect()
    assert lease() is None
    assert leases(client) == before


def test_a_lease_held_in_a_reference_cycle_goes_with_the_cycle(client, name):
    client.put(name, np.ones(8))
    before = leases(client)

    class Holder:
        pass

    h = Holder()
    h.arr = client.get(name)
    h.me = h
    assert leases(client) == before + 1
    del h
    gc.collect()
    assert leases(client) == before


def test_a_leased_version_stays_readable_after_newer_puts_and_delete(client, name):
    first = client.put(name, np.full(1000, 1.0))
    old = client.get(name)
    client.put(name, np.full(1000, 2.0))
    client.delete(name)
    with pytest.raises(tensorshm.NotFound):
        client.get(name)
    assert (old == 1.0).all()
    assert tensorshm.info(old).version == first.version


def test_object_release_gives_the_lease_back_at_once(client, name):
    client.put(name, np.arange(4))
    before = leases(client)
    with client.get_object(name) as obj:
        assert leases(client) == before + 1
        assert obj.info.name == name and obj.dtype == "int64" and obj.shape == (4,)
        assert obj.numpy().tolist() == [0, 1, 2, 3]
    assert obj.released
    assert leases(client) == before
    assert "released" in repr(obj)


def test_arrays_from_an_object_hold_the_lease_after_the_object_is_dropped(client, name):
    client.put(name, np.arange(4))
    before = leases(client)
    arr = client.get_object(name).numpy()
    gc.collect()
    assert leases(client) == before + 1
    assert arr.tolist() == [0, 1, 2, 3]
    del arr
    gc.collect()
    assert leases(client) == before


def test_arrays_stay_valid_after_their_client_is_closed(daemon, name):
    with tensorshm.connect() as c:
        c.put(name, np.arange(6.0))
        arr = c.get(name)
    assert c.closed
    assert arr.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    with tensorshm.connect() as other:
        before = other.stats().leases
        del arr
        gc.collect()
        assert other.stats().leases == before - 1


def test_info_names_the_version_behind_an_array_or_any_view(client, name):
    first = client.put(name, np.zeros((4, 4)))
    arr = client.get(name)
    assert tensorshm.info(arr) == tensorshm.info(arr[1:, ::2].T)
    assert tensorshm.info(arr).version == first.version
    with pytest.raises(tensorshm.InvalidArgument):
        tensorshm.info(np.zeros(3))
