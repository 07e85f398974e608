"""Element types: DLPack (code, bits) pairs, numpy dtypes, torch dtypes and names.

numpy has no bfloat16 or float8 types; the ``ml_dtypes`` package provides them
as numpy dtypes. It is optional and imported only when one of those types is
met, so that a missing package is an error about that object only.
"""

from __future__ import annotations

import sys
from typing import Any, Tuple

import numpy as np

from . import _tensorshm
from ._errors import UnsupportedDtype

Code = Tuple[int, int]  # (DLPack type code, bits)

_BOOL, _INT, _UINT, _FLOAT, _BFLOAT, _COMPLEX = 6, 0, 1, 2, 4, 5

# Types numpy has natively.
_NUMPY: dict[Code, np.dtype] = {
    (_BOOL, 8): np.dtype(np.bool_),
    (_INT, 8): np.dtype(np.int8),
    (_INT, 16): np.dtype(np.int16),
    (_INT, 32): np.dtype(np.int32),
    (_INT, 64): np.dtype(np.int64),
    (_UINT, 8): np.dtype(np.uint8),
    (_UINT, 16): np.dtype(np.uint16),
    (_UINT, 32): np.dtype(np.uint32),
    (_UINT, 64): np.dtype(np.uint64),
    (_FLOAT, 16): np.dtype(np.float16),
    (_FLOAT, 32): np.dtype(np.float32),
    (_FLOAT, 64): np.dtype(np.float64),
    (_COMPLEX, 64): np.dtype(np.complex64),
    (_COMPLEX, 128): np.dtype(np.complex128),
}
_FROM_NUMPY: dict[np.dtype, Code] = {dt: code for code, dt in _NUMPY.items()}

# Types that need ml_dtypes; the names are ml_dtypes' (and torch's) names.
_ML_DTYPES: dict[Code, str] = {
    (_BFLOAT, 16): "bfloat16",
    (7, 8): "float8_e3m4",
    (8, 8): "float8_e4m3",
    (9, 8): "float8_e4m3b11fnuz",
    (10, 8): "float8_e4m3fn",
    (11, 8): "float8_e4m3fnuz",
    (12, 8): "float8_e5m2",
    (13, 8): "float8_e5m2fnuz",
    (14, 8): "float8_e8m0fnu",
}
_FROM_ML_NAME: dict[str, Code] = {name: code for code, name in _ML_DTYPES.items()}


def name(code: Code) -> str:
    """The canonical name ("float32", "bfloat16", ...)."""
    return _tensorshm.dtype_name(code[0], code[1])


def _ml_dtypes(what: str) -> Any:
    try:
        import ml_dtypes  # noqa: PLC0415 - optional dependency, imported on first use
    except ImportError:
        raise UnsupportedDtype(
            f"{what} needs the optional package ml_dtypes (numpy has no bfloat16 or float8 types): "
            "pip install ml_dtypes"
        ) from None
    return ml_dtypes


def to_numpy(code: Code) -> np.dtype:
    """The numpy dtype for a stored type; bfloat16 and float8 come from ml_dtypes."""
    dt = _NUMPY.get(code)
    if dt is not None:
        return dt
    ml_name = _ML_DTYPES.get(code)
    if ml_name is None:
        raise UnsupportedDtype(f"unsupported dtype {name(code)}")
    ml = _ml_dtypes(f"reading {ml_name} as numpy")
    t = getattr(ml, ml_name, None)
    if t is None:
        raise UnsupportedDtype(
            f"{ml_name} needs a newer ml_dtypes than the installed {getattr(ml, '__version__', '?')}: "
            "pip install -U ml_dtypes"
        )
    return np.dtype(t)


def from_numpy(dt: np.dtype) -> Code:
    """The stored type for a (native byte order) numpy dtype."""
    code = _FROM_NUMPY.get(dt)
    if code is not None:
        return code
    if type(dt.type).__module__.startswith("ml_dtypes") or dt.type.__module__.startswith("ml_dtypes"):
        code = _FROM_ML_NAME.get(dt.name)
        if code is not None:
            return code
    raise UnsupportedDtype(
        f"numpy dtype {dt!r} cannot be stored; supported: bool, int8..int64, uint8..uint64, float16/32/64, "
        "complex64/128, and bfloat16/float8 through ml_dtypes"
    )


def _torch_table(torch: Any) -> dict[Any, Code]:
    table = {
        torch.bool: (_BOOL, 8), torch.int8: (_INT, 8), torch.int16: (_INT, 16), torch.int32: (_INT, 32),
        torch.int64: (_INT, 64), torch.uint8: (_UINT, 8), torch.float16: (_FLOAT, 16),
        torch.float32: (_FLOAT, 32), torch.float64: (_FLOAT, 64), torch.bfloat16: (_BFLOAT, 16),
        torch.complex64: (_COMPLEX, 64), torch.complex128: (_COMPLEX, 128),
    }
    # Newer torch releases add these; older ones simply lack them.
    for attr, code in (("uint16", (_UINT, 16)), ("uint32", (_UINT, 32)), ("uint64", (_UINT, 64))):
        if hasattr(torch, attr):
            table[getattr(torch, attr)] = code
    for code, ml_name in _ML_DTYPES.items():
        if code != (_BFLOAT, 16) and hasattr(torch, ml_name):
            table[getattr(torch, ml_name)] = code
    return table


_torch_codes: dict[Any, Code] | None = None


def _torch_codes_table(torch: Any) -> dict[Any, Code]:
    global _torch_codes
    if _torch_codes is None:
        _torch_codes = _torch_table(torch)
    return _torch_codes


def from_torch(torch: Any, dt: Any) -> Code:
    code = _torch_codes_table(torch).get(dt)
    if code is None:
        raise UnsupportedDtype(f"torch dtype {dt} cannot be stored")
    return code


def to_torch(torch: Any, code: Code) -> Any:
    for dt, c in _torch_codes_table(torch).items():
        if c == code:
            return dt
    raise UnsupportedDtype(f"torch {torch.__version__} has no {name(code)} type; read it with get() instead")


def parse(dtype: Any) -> Code:
    """(code, bits) of a dtype given as a name ("float32", "bfloat16", "<f4"), a
    numpy dtype or scalar type (ml_dtypes' included) or a torch dtype."""
    if isinstance(dtype, str):
        found = _tensorshm.dtype_from_name(dtype)
        if found is not None:
            return (int(found[0]), int(found[1]))
        raise UnsupportedDtype(f"unknown dtype name {dtype!r}")
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(dtype, torch.dtype):
        return from_torch(torch, dtype)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise UnsupportedDtype(f"not a dtype: {dtype!r}") from None
    if not dt.isnative:
        dt = dt.newbyteorder("=")
    return from_numpy(dt)
