"""create(), names, daemon information, and the package as pip installs it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import cases
import tensorshm


def test_create_seals_the_object_when_the_block_ends(client, name):
    cr = client.create(name, shape=(1080, 1920, 3), dtype="uint8")
    with cr as buf:
        assert buf.flags.writeable and buf.shape == (1080, 1920, 3) and buf.dtype == np.uint8
        buf[...] = 7
        buf[0, 0] = (1, 2, 3)
        with pytest.raises(tensorshm.NotFound):
            client.get(name)  # not visible before the seal
    assert cr.info is not None and cr.info.name == name
    got = client.get(name)
    assert got[0, 0].tolist() == [1, 2, 3] and int(got[1:].min()) == 7
    assert tensorshm.info(got).version == cr.info.version
    assert not buf.flags.writeable  # the block's array is read-only afterwards


def test_create_aborts_the_object_when_the_block_raises(client, name):
    with pytest.raises(RuntimeError, match="camera failed"):
        with client.create(name, shape=(4,), dtype="float32") as buf:
            buf[...] = 1
            raise RuntimeError("camera failed")
    with pytest.raises(tensorshm.NotFound):
        client.get(name)
    assert client.stats().open_creates == 0


def test_create_writes_in_place_with_no_copy(client, name):
    with client.create(name, shape=(1000,), dtype="float64") as buf:
        address = buf.ctypes.data
        buf[:] = np.arange(1000)
    got = client.get(name)
    # The reader maps the segment read-only at another address, at the same offset.
    assert cases.segment_check(got, client.daemon_info.instance)["segment"]
    assert got.tolist() == list(range(1000)) and address != 0


def test_create_keeps_fortran_order_and_ml_dtypes(client, name):
    with client.create(name, shape=(3, 4), dtype="int32", order="F") as buf:
        assert buf.flags.f_contiguous
        buf[...] = np.arange(12).reshape(3, 4)
    got = client.get(name)
    assert got.flags.f_contiguous and got.tolist() == np.arange(12).reshape(3, 4).tolist()
    if "bfloat16" in cases.ml_dtypes_available():
        with client.create(name, shape=(2,), dtype="bfloat16") as buf:
            buf[...] = [1.5, -2.0]
        assert client.get(name).astype(np.float32).tolist() == [1.5, -2.0]


def test_create_accepts_numpy_and_torch_dtypes(client, name):
    with client.create(name, shape=3, dtype=np.int16) as buf:
        buf[:] = 5
    assert client.stat(name).dtype == "int16"
    torch = pytest.importorskip("torch")
    with client.create(name, shape=(2, 2), dtype=torch.float16) as buf:
        buf[...] = 0.5
    assert client.stat(name).dtype == "float16"


def test_list_stat_and_delete(client, name):
    for i in range(3):
        client.put(f"{name}/{i}", np.zeros(i + 1))
    listed = client.list(prefix=f"{name}/")
    assert [i.name for i in listed] == [f"{name}/0", f"{name}/1", f"{name}/2"]
    assert [i.shape for i in listed] == [(1,), (2,), (3,)]
    assert len(client.list(prefix=f"{name}/", limit=2)) == 2
    st = client.stat(f"{name}/2")
    assert (st.dtype, st.nbytes, st.share) == ("float64", 24, "owner")
    client.delete(f"{name}/1")
    assert [i.name for i in client.list(prefix=f"{name}/")] == [f"{name}/0", f"{name}/2"]


def test_connect_uses_tensorshm_socket_and_reports_the_daemon(daemon):
    assert tensorshm.default_socket_path() == daemon.socket
    with tensorshm.connect(name="api-test") as c:
        info = c.daemon_info
        assert info.socket_path == daemon.socket and info.instance == daemon.instance
        assert info.protocol_version >= 1 and info.page_size > 0
        assert all(s.size > 0 for s in info.segments)
        assert c.ping() > 0
        assert c.stats().clients >= 1
        assert daemon.instance in repr(c)
    assert c.closed and "closed" in repr(c)
    with tensorshm.connect(Path(daemon.socket)) as c:
        assert c.socket_path == daemon.socket


def test_put_of_a_host_object_with_wait_false_returns_a_finished_future(client, name):
    f = client.put(name, np.arange(3), wait=False)
    assert f.done()
    assert f.result().name == name


def test_the_package_ships_type_stubs():
    pkg = Path(tensorshm.__file__).parent
    assert (pkg / "py.typed").exists()
    stub = pkg / "_tensorshm.pyi"
    assert stub.exists() and "class Client" in stub.read_text()



def test_tensorshmctl_sees_what_python_put(client, name, daemon):
    import json
    import subprocess

    ctl = os.environ.get("TENSORSHMCTL") or str(Path(__file__).resolve().parents[2] / "build" / "ctl" / "tensorshmctl")
    if not os.access(ctl, os.X_OK):
        pytest.skip(f"tensorshmctl not built at {ctl} (set TENSORSHMCTL)")
    client.put(name, np.zeros((2, 3), dtype=np.complex64), share="everyone")
    r = subprocess.run([ctl, "--socket", daemon.socket, "--json", "ls", name], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    (listed,) = json.loads(r.stdout)
    assert (listed["name"], listed["dtype"], listed["shape"]) == (name, "complex64", [2, 3])


def test_large_puts_copied_by_several_threads_arrive_whole(daemon, name):
    src = np.arange(3 * 1024 * 1024, dtype=np.float32).reshape(1024, 3072)  # 12 MiB
    with tensorshm.connect(daemon.socket, copy_threads=4) as c:
        c.put(name + "/dense", src)
        c.put(name + "/cols", src[:, ::3])  # packed to C order, rows split between the threads
        np.testing.assert_array_equal(c.get(name + "/dense"), src)
        np.testing.assert_array_equal(c.get(name + "/cols"), src[:, ::3])


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_copy_threads_must_be_a_positive_int(daemon, bad):
    with pytest.raises(tensorshm.InvalidArgument, match="copy_threads"):
        tensorshm.connect(daemon.socket, copy_threads=bad)
