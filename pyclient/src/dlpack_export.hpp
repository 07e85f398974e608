// DLPack export of leased objects: PyCapsules that hand read-only CPU memory to
// any DLPack consumer (numpy, torch, jax, ...). Written against the DLPack ABI
// directly (dlpack.h v1.1), so that it works with every nanobind release and
// offers both the legacy "dltensor" capsule (torch 1.x, numpy 1.x) and the
// versioned one, which carries the read-only flag.
#pragma once

#include <Python.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "tensorshm/dtype.hpp"

namespace tensorshm::python {

struct DLPackSource {
  const void* data = nullptr;  // first element; may be null for empty objects
  DType dtype;
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> strides;  // elements
  std::shared_ptr<const void> keep;   // held until the consumer lets go (the lease)
};

/// A new reference to a capsule named "dltensor" (versioned = false) or
/// "dltensor_versioned" (flags: read-only). Never fails except on memory
/// exhaustion (returns nullptr with a Python error set).
PyObject* make_dlpack_capsule(DLPackSource src, bool versioned);

}  // namespace tensorshm::python
