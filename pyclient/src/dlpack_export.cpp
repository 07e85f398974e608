#include "dlpack_export.hpp"

#include <new>
#include <utility>

namespace tensorshm::python {
namespace {

// ---- the DLPack ABI (dlpack.h v1.1), as much of it as is used here ----------

struct DLDevice {
  std::int32_t device_type;  // kDLCPU = 1
  std::int32_t device_id;
};
struct DLDataType {
  std::uint8_t code;
  std::uint8_t bits;
  std::uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  std::int32_t ndim;
  DLDataType dtype;
  std::int64_t* shape;
  std::int64_t* strides;  // elements
  std::uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};
struct DLPackVersion {
  std::uint32_t major;
  std::uint32_t minor;
};
struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(DLManagedTensorVersioned* self);
  std::uint64_t flags;
  DLTensor dl_tensor;
};
constexpr std::int32_t kDLCPU = 1;
constexpr std::uint64_t kDLFlagReadOnly = 1;
constexpr const char* kLegacyName = "dltensor";
constexpr const char* kVersionedName = "dltensor_versioned";

// Owns what the DLTensor points at; freed by the consumer through the deleter.
struct Export {
  DLPackSource src;
  DLManagedTensor legacy{};
  DLManagedTensorVersioned versioned{};
};

// Deleters never touch Python: consumers may call them from any thread,
// with or without the GIL. Dropping `keep` may send the lease's release.
void delete_legacy(DLManagedTensor* m) { delete static_cast<Export*>(m->manager_ctx); }
void delete_versioned(DLManagedTensorVersioned* m) { delete static_cast<Export*>(m->manager_ctx); }

// Capsule destructors: a consumer renames the capsule ("used_...") when it
// takes ownership; an unconsumed capsule frees the export itself.
template <class Managed>
void capsule_destructor(PyObject* capsule, const char* name) {
  if (!PyCapsule_IsValid(capsule, name)) return;  // consumed
  PyObject *type, *value, *traceback;
  PyErr_Fetch(&type, &value, &traceback);
  auto* m = static_cast<Managed*>(PyCapsule_GetPointer(capsule, name));
  if (m != nullptr) m->deleter(m);
  PyErr_Restore(type, value, traceback);
}
void destroy_legacy_capsule(PyObject* c) { capsule_destructor<DLManagedTensor>(c, kLegacyName); }
void destroy_versioned_capsule(PyObject* c) { capsule_destructor<DLManagedTensorVersioned>(c, kVersionedName); }

}  // namespace

PyObject* make_dlpack_capsule(DLPackSource src, bool versioned) {
  static const std::uint64_t kEmpty = 0;  // numpy and torch want a non-null address
  auto* e = new (std::nothrow) Export{std::move(src), {}, {}};
  if (e == nullptr) return PyErr_NoMemory();
  DLTensor t{};
  t.data = const_cast<void*>(e->src.data != nullptr ? e->src.data : &kEmpty);
  t.device = DLDevice{kDLCPU, 0};
  t.ndim = static_cast<std::int32_t>(e->src.shape.size());
  t.dtype = DLDataType{e->src.dtype.code, e->src.dtype.bits, e->src.dtype.lanes};
  t.shape = e->src.shape.data();
  t.strides = e->src.strides.data();
  t.byte_offset = 0;
  PyObject* capsule = nullptr;
  if (versioned) {
    e->versioned.version = DLPackVersion{1, 1};
    e->versioned.manager_ctx = e;
    e->versioned.deleter = delete_versioned;
    e->versioned.flags = kDLFlagReadOnly;
    e->versioned.dl_tensor = t;
    capsule = PyCapsule_New(&e->versioned, kVersionedName, destroy_versioned_capsule);
  } else {
    e->legacy.dl_tensor = t;
    e->legacy.manager_ctx = e;
    e->legacy.deleter = delete_legacy;
    capsule = PyCapsule_New(&e->legacy, kLegacyName, destroy_legacy_capsule);
  }
  if (capsule == nullptr) delete e;
  return capsule;
}

}  // namespace tensorshm::python
