"""Every error is a tensorshm.Error subclass that says what to do."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest

import tensorshm
from tensorshm import _tensorshm

# errc name -> (class, built-in base it also derives from)
EXPECTED = {
    "not_found": (tensorshm.NotFound, LookupError),
    "timeout": (tensorshm.Timeout, TimeoutError),
    "pool_exhausted": (tensorshm.PoolExhausted, tensorshm.Error),
    "invalid_name": (tensorshm.InvalidName, ValueError),
    "invalid_argument": (tensorshm.InvalidArgument, ValueError),
    "unsupported_dtype": (tensorshm.UnsupportedDtype, TypeError),
    "protocol_error": (tensorshm.ProtocolError, tensorshm.Error),
    "version_mismatch": (tensorshm.VersionMismatch, tensorshm.ProtocolError),
    "permission_denied": (tensorshm.PermissionDenied, PermissionError),
    "not_open": (tensorshm.NotOpen, tensorshm.Error),
    "limit_exceeded": (tensorshm.LimitExceeded, tensorshm.Error),
    "daemon_unreachable": (tensorshm.DaemonUnreachable, ConnectionError),
    "no_gpu": (tensorshm.NoGpu, tensorshm.Error),
    "cuda_error": (tensorshm.CudaError, tensorshm.Error),
    "system_error": (tensorshm.SystemCallError, OSError),
    "internal": (tensorshm.InternalError, tensorshm.Error),
}


@pytest.mark.parametrize("code", range(1, len(_tensorshm.errc_names())), ids=lambda i: _tensorshm.errc_names()[i])
def test_each_libtensorshm_error_code_raises_its_own_class(code):
    errc = _tensorshm.errc_names()[code]
    cls, builtin = EXPECTED[errc]
    with pytest.raises(cls, match="the message") as e:
        _tensorshm.raise_errc(code, "the message")
    assert type(e.value) is cls and isinstance(e.value, builtin) and isinstance(e.value, tensorshm.Error)
    assert e.value.code == errc


def test_get_of_an_unknown_name_raises_not_found(client):
    with pytest.raises(tensorshm.NotFound, match="no-such-name"):
        client.get("no-such-name")
    with pytest.raises(tensorshm.NotFound):
        client.stat("no-such-name")
    with pytest.raises(tensorshm.NotFound):
        client.delete("no-such-name")


@pytest.mark.parametrize("bad", ["", "a/../b", "x" * 300, "with space", "/leading", "tab\there", "a//b"])
def test_invalid_names_raise_invalid_name(client, bad):
    with pytest.raises(tensorshm.InvalidName):
        client.put(bad, np.zeros(1))
    with pytest.raises(tensorshm.InvalidName):
        client.get(bad)


def test_bad_arguments_raise_invalid_argument(client, name):
    with pytest.raises(tensorshm.InvalidArgument):
        client.create(name, shape=(2, -1), dtype="uint8")
    with pytest.raises(tensorshm.InvalidArgument, match="32"):
        client.create(name, shape=(1,) * 33, dtype="uint8")
    with pytest.raises(tensorshm.InvalidArgument, match="timeout"):
        client.get(name, timeout=-1)
    with pytest.raises(tensorshm.InvalidArgument, match="share"):
        client.put(name, np.zeros(1), share="world")  # type: ignore[arg-type]


@pytest.mark.parametrize("obj", [np.array(["a", "b"]), np.array([object()]), np.zeros(2, dtype="f4,i4"),
                                 np.zeros(2, dtype=np.longdouble), np.zeros(2, dtype="M8[s]")],
                         ids=["str", "object", "structured", "longdouble", "datetime"])
def test_arrays_of_unsupported_dtypes_raise_unsupported_dtype(client, name, obj):
    with pytest.raises(tensorshm.UnsupportedDtype):
        client.put(name, obj)


def test_unknown_dtype_names_raise_unsupported_dtype(client, name):
    with pytest.raises(tensorshm.UnsupportedDtype, match="float128"):
        client.create(name, shape=(1,), dtype="float128")


def test_reading_bfloat16_without_ml_dtypes_names_the_package(client, name, monkeypatch):
    ml = pytest.importorskip("ml_dtypes")
    client.put(name, np.zeros(3, dtype=ml.bfloat16))
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # import ml_dtypes now fails
    before = client.stats().leases
    with pytest.raises(tensorshm.UnsupportedDtype, match="pip install ml_dtypes"):
        client.get(name)
    assert client.stats().leases == before  # the failed get left no lease behind
    with pytest.raises(tensorshm.UnsupportedDtype, match="ml_dtypes"):
        client.create(name, shape=(2,), dtype="bfloat16")


def test_a_full_pool_raises_pool_exhausted_and_space_returns_on_abort(client, name):
    creations = []
    try:
        with pytest.raises(tensorshm.PoolExhausted, match="pool exhausted"):
            for i in range(64):  # 12 MiB each: a 96 MiB pool holds a handful
                creations.append(client.create(f"{name}/{i}", shape=(12 << 20,), dtype="uint8"))
        assert len(creations) >= 1
    finally:
        for cr in creations:
            cr.abort()
    assert client.stats().open_creates == 0
    with client.create(f"{name}/after", shape=(12 << 20,), dtype="uint8") as buf:
        buf[:4] = 1


def test_an_unreachable_daemon_names_the_socket_and_how_to_start_it(tmp_path):
    path = str(tmp_path / "nobody-listens.sock")
    with pytest.raises(tensorshm.DaemonUnreachable) as e:
        tensorshm.connect(path)
    assert path in str(e.value) and "tensorshmd" in str(e.value) and "TENSORSHM_SOCKET" in str(e.value)
    assert isinstance(e.value, ConnectionError)


def fake_daemon(path: str, answer) -> threading.Thread:
    """A one-connection server that reads the client's Hello frame and sends
    answer(request_id) back."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn, srv:
            header = b""
            while len(header) < 16:
                header += conn.recv(16 - len(header))
            _magic, _version, _type, length, request_id = struct.unpack("<IHHII", header)
            while length > 0:
                length -= len(conn.recv(length))
            conn.sendall(answer(request_id))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_a_daemon_of_another_protocol_version_raises_version_mismatch(tmp_path):
    text = b"protocol version mismatch: this daemon speaks version 99"
    path = str(tmp_path / "future.sock")
    t = fake_daemon(path, lambda rid: struct.pack("<IHHII", 0x4D485354, 99, 0xFFFF, len(text), rid) + text)
    with pytest.raises(tensorshm.VersionMismatch, match="version 99") as e:
        tensorshm.connect(path)
    assert isinstance(e.value, tensorshm.ProtocolError)
    t.join()


def test_a_peer_that_is_not_tensorshmd_is_reported_as_a_protocol_error(tmp_path):
    path = str(tmp_path / "http.sock")
    t = fake_daemon(path, lambda rid: b"HTTP/1.1 400 Bad Request\r\n\r\n")
    with pytest.raises(tensorshm.ProtocolError, match="magic"):
        tensorshm.connect(path)
    t.join()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the other process as another user")
def test_another_users_object_raises_permission_denied(client, name, tmp_path):
    client.put(name, np.zeros(2))  # share="owner"
    script = os.path.join(os.path.dirname(__file__), "peer.py")
    try:
        r = subprocess.run([sys.executable, script, "try_get", json.dumps({"name": name})], capture_output=True,
                           text=True, timeout=120, user=65534, group=65534, cwd=str(tmp_path.anchor))
    except PermissionError:
        pytest.skip(f"uid 65534 may not run {sys.executable}")
    if r.returncode != 0 and "Permission denied" in r.stderr:
        pytest.skip(f"uid 65534 may not read this Python environment: {r.stderr.splitlines()[-1]}")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["error"] == "PermissionDenied" and "not shared" in out["message"]
    client.put(name, np.zeros(2), share="everyone")
    r = subprocess.run([sys.executable, script, "try_get", json.dumps({"name": name})], capture_output=True,
                       text=True, timeout=120, user=65534, group=65534, cwd=str(tmp_path.anchor))
    assert json.loads(r.stdout) == {"ok": True}


def test_a_closed_client_raises_not_open(daemon):
    c = tensorshm.connect()
    c.close()
    with pytest.raises(tensorshm.NotOpen, match="closed"):
        c.get("anything")


def test_sealing_twice_raises_not_open(client, name):
    cr = client.create(name, shape=(2,), dtype="float32")
    cr.seal()
    with pytest.raises(tensorshm.NotOpen):
        cr.seal()


class FakeCudaArray:
    """Claims to be device memory at an address no GPU allocated."""

    __cuda_array_interface__ = {"shape": (4,), "typestr": "<f4", "data": (0x7F0000001000, False), "version": 3,
                                "strides": None}


def test_gpu_objects_on_a_machine_without_cuda_raise_a_tensorshm_error(client, name):
    with pytest.raises((tensorshm.NoGpu, tensorshm.CudaError, tensorshm.InvalidArgument)) as e:
        client.put(name, FakeCudaArray())
    if not tensorshm.cuda_supported() or not os.path.exists("/dev/nvidiactl"):
        assert isinstance(e.value, tensorshm.NoGpu), e.value  # no CUDA build, or no driver here
    if not tensorshm.cuda_supported():
        assert "without CUDA" in str(e.value)
