"""Handoffs between processes: every dtype and shape edge case arrives bit-exact,
in its layout, as a read-only view of the daemon's segment."""

from __future__ import annotations

import numpy as np
import pytest

import cases
import tensorshm

ALL = cases.all_cases()


def test_every_case_put_here_arrives_bit_exact_in_another_process(client, daemon, peer):
    for case in ALL:
        client.put(f"rt-out/{case.name}", case.make())
    seen = peer.run("consume", prefix="rt-out", cases=[k.name for k in ALL], instance=daemon.instance)
    for case in ALL:
        got = seen[case.name]
        want = cases.expected(case)
        assert {k: got[k] for k in want} == want, case.name


def test_every_case_put_by_another_process_arrives_bit_exact_here(client, daemon, peer):
    peer.run("produce", prefix="rt-in", cases=[k.name for k in ALL])
    for case in ALL:
        arr = client.get(f"rt-in/{case.name}")
        assert cases.describe(arr) == cases.expected(case), case.name


def test_the_consumers_array_lies_in_a_read_only_shared_mapping_of_the_segment(client, daemon, peer):
    names = ["dtype-float32", "shape-3mib", "shape-bigger-than-a-pool-segment"]
    for n in names:
        client.put(f"maps/{n}", next(k for k in ALL if k.name == n).make())
    seen = peer.run("consume", prefix="maps", cases=names, instance=daemon.instance)
    for n in names:
        assert seen[n]["mapped"] and seen[n]["read_only"] and seen[n]["shared"] and seen[n]["segment"], seen[n]
        assert seen[n]["writeable"] is False
    local = client.get("maps/shape-3mib")
    assert cases.segment_check(local, daemon.instance) == {
        "mapped": True, "read_only": True, "shared": True, "segment": True}


def test_two_gets_of_one_version_share_an_address(client, name):
    client.put(name, np.arange(1000.0))
    a, b = client.get(name), client.get(name)
    assert a.ctypes.data == b.ctypes.data
    assert a.base is not b.base  # two leases, one memory


def test_a_second_process_sees_two_gets_of_one_version_at_one_address(client, daemon, peer):
    client.put("addr/dtype-int64", next(k for k in ALL if k.name == "dtype-int64").make())
    seen = peer.run("consume", prefix="addr", cases=["dtype-int64"], instance=daemon.instance)
    assert seen["dtype-int64"]["same_address"]


def test_writing_into_a_got_array_fails_with_numpys_read_only_error(client, name):
    client.put(name, np.zeros(4))
    arr = client.get(name)
    with pytest.raises(ValueError, match="read-only"):
        arr[0] = 1.0
    with pytest.raises(ValueError):
        arr.flags.writeable = True
    view = arr[1:]
    with pytest.raises(ValueError, match="read-only"):
        view += 1


def test_fortran_order_is_kept_and_other_strides_are_packed_to_c(client, name):
    f = np.asfortranarray(np.arange(24, dtype=np.int32).reshape(4, 6))
    info = client.put(name, f)
    assert info.strides == (1, 4)
    got = client.get(name)
    assert got.flags.f_contiguous and not got.flags.c_contiguous
    assert np.array_equal(got, f)

    sliced = np.arange(48, dtype=np.int32).reshape(6, 8)[::2, 1::3]
    info = client.put(name, sliced)
    assert info.strides == (3, 1)
    assert np.array_equal(client.get(name), sliced)


def test_put_reads_buffer_protocol_and_array_interface_objects(client, name):
    client.put(name, bytearray(b"tensorshm"))
    assert client.get(name).tobytes() == b"tensorshm"
    assert client.get(name).dtype == np.uint8

    class Interface:
        def __init__(self, a):
            self.a = a
            self.__array_interface__ = a.__array_interface__

    src = np.arange(6, dtype=np.float16).reshape(2, 3)
    client.put(name, Interface(src))
    assert np.array_equal(client.get(name), src)

    client.put(name, memoryview(np.arange(5, dtype=np.uint64)))
    assert client.get(name).tolist() == [0, 1, 2, 3, 4]

    client.put(name, [[1, 2], [3, 4]])
    assert client.get(name).tolist() == [[1, 2], [3, 4]]


def test_put_with_dtype_stores_the_converted_values(client, name):
    info = client.put(name, np.arange(5), dtype="float32")
    assert info.dtype == "float32"
    assert client.get(name).dtype == np.float32


def test_big_endian_input_is_stored_in_native_order(client, name):
    src = np.arange(5, dtype=">i4")
    client.put(name, src)
    got = client.get(name)
    assert got.dtype == np.dtype("int32") and got.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("dtype", cases.ml_dtypes_available())
def test_ml_dtypes_arrays_keep_their_type(client, name, dtype):
    src = cases.random_array(dtype, dtype, (3, 4))
    info = client.put(name, src)
    assert info.dtype == dtype
    got = client.get(name)
    assert got.dtype == src.dtype
    assert got.tobytes() == src.tobytes()


def test_put_returns_the_info_that_stat_and_list_report(client, name):
    info = client.put(name, np.ones((2, 3), dtype=np.float64))
    assert isinstance(info, tensorshm.ObjectInfo)
    assert (info.name, info.dtype, info.shape, info.strides, info.nbytes) == (name, "float64", (2, 3), (3, 1), 48)
    assert info.sealed and info.share == "owner"
    assert client.stat(name).version == info.version
    assert [i.name for i in client.list(prefix=name)] == [name]
