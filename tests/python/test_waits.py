"""Waiting for names and newer versions, across processes and threads; the GIL
is released while a call blocks; fork() reconnects; Ctrl-C ends a wait."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest

import tensorshm


def test_get_waits_for_a_newer_version_put_by_another_process(client, name, peer):
    first = client.put(name, np.zeros(4, dtype=np.int64))
    p = peer.start("put_value", name=name, value=7, delay=0.3)
    arr = client.get(name, newer_than=first.version, timeout=60)
    done = peer.result(p)
    assert tensorshm.info(arr).version == done["version"] > first.version
    assert arr.tolist() == [7, 7, 7, 7]


def test_another_process_waiting_for_a_newer_version_gets_the_one_put_here(client, name, peer):
    first = client.put(name, np.zeros(3, dtype=np.int64))
    p = peer.start("wait_newer", name=name, newer_than=first.version)
    second = client.put(name, np.arange(3, dtype=np.int64))
    got = peer.result(p)
    assert got == {"version": second.version, "values": [0, 1, 2]}


def test_get_waits_for_a_name_that_does_not_exist_yet(client, name, peer):
    p = peer.start("put_value", name=name, value=3, n=2, delay=0.3)
    arr = client.get(name, timeout=60)
    peer.result(p)
    assert arr.tolist() == [3, 3]


def test_a_wait_that_runs_out_raises_timeout_which_is_a_timeouterror(client, name):
    info = client.put(name, np.zeros(1))
    with pytest.raises(tensorshm.Timeout, match="gave up after waiting 250 ms") as e:
        client.get(name, newer_than=info.version, timeout=0.25)
    assert isinstance(e.value, TimeoutError)
    with pytest.raises(tensorshm.NotFound):
        client.get(name, newer_than=info.version)  # timeout 0: answer at once


def test_a_blocked_get_releases_the_gil_so_other_threads_run(daemon, name):
    # If get() held the GIL while it waits, the main thread could not put and
    # the waiting thread would time out instead.
    with tensorshm.connect() as waiter_client, tensorshm.connect() as producer:
        first = producer.put(name, np.zeros(2))
        result: dict = {}

        def wait() -> None:
            try:
                result["arr"] = waiter_client.get(name, newer_than=first.version, timeout=60)
            except tensorshm.Error as e:  # pragma: no cover - reported below
                result["error"] = e

        t = threading.Thread(target=wait)
        t.start()
        producer.put(name, np.ones(2))
        t.join()
        assert "error" not in result
        assert result["arr"].tolist() == [1.0, 1.0]


def test_one_client_is_safe_to_share_between_threads(client, name):
    errors = []

    def work(i: int) -> None:
        try:
            for k in range(50):
                client.put(f"{name}/{i}", np.full(16, k))
                assert client.get(f"{name}/{i}")[0] == k
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_ctrl_c_interrupts_a_long_wait(client, name):
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            client.get(name + "/never", timeout=60)
    finally:
        timer.cancel()


def test_a_client_used_after_fork_reconnects_in_the_child(client, name):
    client.put(name, np.arange(5))
    inherited = client.get(name)
    pid = os.fork()
    if pid == 0:  # child: report through the exit status only
        code = 1
        try:
            ok = inherited.tolist() == [0, 1, 2, 3, 4]            # parent's mapping, still readable
            client.put(name + "/child", np.arange(3) * 10)       # a new connection
            ok = ok and client.get(name + "/child").tolist() == [0, 10, 20]
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert client.get(name + "/child").tolist() == [0, 10, 20]
    assert inherited.tolist() == [0, 1, 2, 3, 4]
    assert client.ping() > 0  # the parent's connection is untouched
