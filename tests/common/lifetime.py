"""Test processes die with the test run: a daemon or peer started by a pytest
run that crashes (or is killed) gets SIGTERM from the kernel instead of living
on. Pass `die_with_parent` as subprocess.Popen's preexec_fn."""

import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent thread exits. (A
    program that changes its uid, as setpriv does, loses it: the kernel
    clears the signal then.)"""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
