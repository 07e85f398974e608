/*
 * segment_layout.h compiled as strict ISO C11 (-std=c11 -pedantic -Werror).
 *
 * The header is the ABI that every reader of a segment shares, so its field
 * offsets are fixed here as numbers: a change that moves a field fails this
 * file at compile time. tshm_c_layout() reports the same facts as the C
 * compiler sees them, and protocol_tests.cpp checks that C++ agrees.
 */
#include <stddef.h>

#include "segment_layout_c.h"
#include "tensorshm/segment_layout.h"

_Static_assert(sizeof(TshmSegmentHeader) == 4096, "segment header is one page");
_Static_assert(offsetof(TshmSegmentHeader, magic) == 0, "magic first");
_Static_assert(offsetof(TshmSegmentHeader, major) == 8, "version right after the magic");
_Static_assert(offsetof(TshmSegmentHeader, minor) == 10, "minor after major");
_Static_assert(offsetof(TshmSegmentHeader, segment_id) == 12, "segment_id");
_Static_assert(offsetof(TshmSegmentHeader, size) == 16, "size");
_Static_assert(offsetof(TshmSegmentHeader, page_size) == 24, "page_size");
_Static_assert(offsetof(TshmSegmentHeader, dedicated) == 28, "dedicated");
_Static_assert(offsetof(TshmSegmentHeader, instance) == 32, "instance");
_Static_assert(offsetof(TshmSegmentHeader, reserved) == 96, "reserved");

_Static_assert(sizeof(TshmExtentHeader) == 4096, "extent header is one page");
_Static_assert(offsetof(TshmExtentHeader, magic) == 0, "magic first");
_Static_assert(offsetof(TshmExtentHeader, major) == 8, "version right after the magic");
_Static_assert(offsetof(TshmExtentHeader, minor) == 10, "minor after major");
_Static_assert(offsetof(TshmExtentHeader, state) == 12, "state");
_Static_assert(offsetof(TshmExtentHeader, generation) == 16, "generation");
_Static_assert(offsetof(TshmExtentHeader, object_version) == 24, "object_version");
_Static_assert(offsetof(TshmExtentHeader, byte_offset) == 32, "byte_offset");
_Static_assert(offsetof(TshmExtentHeader, nbytes) == 40, "nbytes");
_Static_assert(offsetof(TshmExtentHeader, extent_bytes) == 48, "extent_bytes");
_Static_assert(offsetof(TshmExtentHeader, dtype_code) == 56, "dtype_code");
_Static_assert(offsetof(TshmExtentHeader, dtype_bits) == 57, "dtype_bits");
_Static_assert(offsetof(TshmExtentHeader, dtype_lanes) == 58, "dtype_lanes");
_Static_assert(offsetof(TshmExtentHeader, ndim) == 60, "ndim");
_Static_assert(offsetof(TshmExtentHeader, shape) == 64, "shape");
_Static_assert(offsetof(TshmExtentHeader, strides) == 64 + 8 * TSHM_MAX_NDIM, "strides");
_Static_assert(offsetof(TshmExtentHeader, owner_uid) == 64 + 16 * TSHM_MAX_NDIM, "owner_uid");
_Static_assert(offsetof(TshmExtentHeader, name_len) == 68 + 16 * TSHM_MAX_NDIM, "name_len");
_Static_assert(offsetof(TshmExtentHeader, name) == 72 + 16 * TSHM_MAX_NDIM, "name");
_Static_assert(offsetof(TshmExtentHeader, reserved) == 72 + 16 * TSHM_MAX_NDIM + TSHM_MAX_NAME + 1, "reserved");

_Static_assert(TSHM_LAYOUT_MAJOR == 1, "layout major version");
_Static_assert(kTshmExtentFree == 0 && kTshmExtentWriting == 1 && kTshmExtentSealed == 2, "extent states");

void tshm_c_layout(TshmCLayout* out) {
  out->segment_header_size = sizeof(TshmSegmentHeader);
  out->segment_instance_offset = offsetof(TshmSegmentHeader, instance);
  out->segment_reserved_offset = offsetof(TshmSegmentHeader, reserved);
  out->extent_header_size = sizeof(TshmExtentHeader);
  out->extent_ndim_offset = offsetof(TshmExtentHeader, ndim);
  out->extent_shape_offset = offsetof(TshmExtentHeader, shape);
  out->extent_strides_offset = offsetof(TshmExtentHeader, strides);
  out->extent_owner_uid_offset = offsetof(TshmExtentHeader, owner_uid);
  out->extent_name_offset = offsetof(TshmExtentHeader, name);
  out->extent_reserved_offset = offsetof(TshmExtentHeader, reserved);
  out->segment_magic = TSHM_SEGMENT_MAGIC;
  out->extent_magic = TSHM_EXTENT_MAGIC;
}
