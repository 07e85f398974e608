/* The segment layout as the C compiler sees it (segment_layout_c.c), for the
 * C++ test that compares it with what C++ sees. */
#ifndef TSHM_TESTS_SEGMENT_LAYOUT_C_H_
#define TSHM_TESTS_SEGMENT_LAYOUT_C_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  size_t segment_header_size;
  size_t segment_instance_offset;
  size_t segment_reserved_offset;
  size_t extent_header_size;
  size_t extent_ndim_offset;
  size_t extent_shape_offset;
  size_t extent_strides_offset;
  size_t extent_owner_uid_offset;
  size_t extent_name_offset;
  size_t extent_reserved_offset;
  uint64_t segment_magic;
  uint64_t extent_magic;
} TshmCLayout;

void tshm_c_layout(TshmCLayout* out);

#ifdef __cplusplus
}
#endif

#endif /* TSHM_TESTS_SEGMENT_LAYOUT_C_H_ */
