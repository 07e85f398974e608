"""torch CPU tensors in and out (Debian's python3-torch), DLPack producers and
consumers (np.from_dlpack, torch.from_dlpack). Comparisons stay inside torch so
that they do not depend on torch's numpy bridge."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import tensorshm

torch = pytest.importorskip("torch", reason="torch is not installed (Debian: python3-torch)")

TORCH_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
                torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128]


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(shape, generator=g, dtype=dtype)
    return torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, generator=g).to(dtype)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().view(torch.uint8),
                                                                     b.contiguous().view(torch.uint8))


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_torch_tensors_round_trip_with_their_dtype(client, name, dtype):
    t = random_tensor(dtype, (5, 7))
    info = client.put(name, t)
    assert info.dtype == str(dtype).replace("torch.", "")
    out = client.get_torch(name)
    assert same_bits(out, t)
    assert out.device.type == "cpu"


def test_get_torch_shares_memory_with_get(client, name):
    client.put(name, torch.arange(12, dtype=torch.float32))
    arr = client.get(name)
    t = client.get_torch(name)
    assert t.data_ptr() == arr.ctypes.data


def test_transposed_tensors_stay_fortran_ordered_and_slices_are_packed(client, name):
    t = torch.arange(20, dtype=torch.int32).reshape(4, 5).t()
    assert client.put(name, t).strides == (1, 5)
    out = client.get_torch(name)
    assert out.stride() == (1, 5) and torch.equal(out, t)
    s = torch.arange(40, dtype=torch.int32).reshape(5, 8)[::2, 1::3]
    assert client.put(name, s).strides == (3, 1)
    assert torch.equal(client.get_torch(name), s)


def test_expanded_and_conjugated_tensors_store_their_values(client, name):
    e = torch.arange(3, dtype=torch.float32).expand(4, 3)
    client.put(name, e)
    assert torch.equal(client.get_torch(name), e)
    z = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    client.put(name, z.conj())
    assert torch.equal(client.get_torch(name), torch.tensor([1 - 2j, 3 + 4j], dtype=torch.complex64))


def test_put_with_dtype_converts_a_tensor(client, name):
    info = client.put(name, torch.arange(4), dtype="bfloat16")
    assert info.dtype == "bfloat16"
    assert client.get_torch(name).dtype == torch.bfloat16


def test_a_tensor_from_get_torch_holds_the_lease(client, name):
    client.put(name, torch.ones(8))
    before = client.stats().leases
    t = client.get_torch(name)
    gc.collect()
    assert client.stats().leases == before + 1
    del t
    gc.collect()
    assert client.stats().leases == before


def test_a_bfloat16_tensor_put_by_another_process_arrives_bit_exact(client, name, peer):
    sent = peer.run("put_torch", name=name)
    out = client.get_torch(name)
    assert out.dtype == torch.bfloat16 and list(out.stride()) == sent["strides"]
    assert out.contiguous().view(torch.int16).tolist() == sent["bytes"]


def test_np_from_dlpack_reads_an_object_without_copying(client, name):
    client.put(name, np.arange(10, dtype=np.float64))
    obj = client.get_object(name)
    arr = np.from_dlpack(obj)
    assert arr.tolist() == list(range(10))
    assert arr.ctypes.data == obj.numpy().ctypes.data
    if np.lib.NumpyVersion(np.__version__) >= "2.1.0":
        assert not arr.flags.writeable  # DLPack 1.0 carries the read-only flag


def test_torch_from_dlpack_reads_an_object_without_copying(client, name):
    client.put(name, np.arange(6, dtype=np.float32).reshape(2, 3))
    obj = client.get_object(name)
    t = torch.from_dlpack(obj)
    assert t.shape == (2, 3) and t.dtype == torch.float32
    assert t.data_ptr() == obj.numpy().ctypes.data
    assert torch.equal(t, torch.arange(6, dtype=torch.float32).reshape(2, 3))
    assert torch.equal(obj.torch(), t)


class DLPackOnly:
    """An object that offers nothing but the DLPack protocol."""

    def __init__(self, inner):
        self.inner = inner

    def __dlpack__(self, **kw):
        return self.inner.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self.inner.__dlpack_device__()


def test_put_reads_dlpack_producers(client, name):
    t = torch.arange(12, dtype=torch.int16).reshape(3, 4)
    info = client.put(name, DLPackOnly(t))
    assert info.dtype == "int16" and info.shape == (3, 4)
    assert torch.equal(client.get_torch(name), t)
    b = torch.randn(4, 2).to(torch.bfloat16)
    assert client.put(name, DLPackOnly(b)).dtype == "bfloat16"
    assert same_bits(client.get_torch(name), b)
