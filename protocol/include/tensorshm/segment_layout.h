/*
 * tensorshm shared-segment layout, version 1.0.
 *
 * Written like dlpack.h: C-compatible, fixed-width fields, explicit values,
 * the {major, minor} version first after the magic. Compiled as C by a test.
 *
 * A segment is a POSIX shared-memory object named by the daemon
 * ("tensorshm.<instance>.p<N>" for pool segments, ".d<N>" for dedicated
 * ones). Its first page holds a TshmSegmentHeader. The rest is carved into
 * page-aligned extents; each extent's first page holds a TshmExtentHeader and
 * the data starts at extent + byte_offset (a page boundary). All integers
 * are little-endian (the host's; tensorshm is single-host).
 *
 * Compatibility: a reader refuses a layout whose major version it does not
 * know; a larger minor only appends fields inside the reserved bytes.
 */
#ifndef TENSORSHM_SEGMENT_LAYOUT_H_
#define TENSORSHM_SEGMENT_LAYOUT_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TSHM_LAYOUT_MAJOR 1
#define TSHM_LAYOUT_MINOR 0
#define TSHM_SEGMENT_MAGIC 0x4745535448535354ULL /* "TSSHTSEG" */
#define TSHM_EXTENT_MAGIC 0x5458455448535354ULL  /* "TSSHTEXT" */
#define TSHM_MAX_NDIM 32
#define TSHM_MAX_NAME 255
#define TSHM_HEADER_BYTES 4096 /* both headers occupy one 4 KiB page */

/* TshmExtentHeader.state */
typedef enum {
  kTshmExtentFree = 0,    /* not holding an object */
  kTshmExtentWriting = 1, /* created, being filled, not visible to readers */
  kTshmExtentSealed = 2,  /* immutable, visible to readers */
} TshmExtentState;

/* First bytes of every segment. */
typedef struct {
  uint64_t magic;         /* TSHM_SEGMENT_MAGIC */
  uint16_t major;         /* TSHM_LAYOUT_MAJOR */
  uint16_t minor;         /* TSHM_LAYOUT_MINOR */
  uint32_t segment_id;    /* daemon-unique id, as in the protocol */
  uint64_t size;          /* bytes of the whole segment, header page included */
  uint32_t page_size;     /* bytes; extents are multiples of it */
  uint32_t dedicated;     /* 1 when the segment holds exactly one object */
  char instance[64];      /* daemon instance name, NUL-terminated */
  uint8_t reserved[4096 - 96];
} TshmSegmentHeader;

/* First bytes of every extent. Written by the daemon only (at create and
 * again at seal); readers may check it against the descriptor they got. */
typedef struct {
  uint64_t magic;          /* TSHM_EXTENT_MAGIC */
  uint16_t major;          /* TSHM_LAYOUT_MAJOR */
  uint16_t minor;          /* TSHM_LAYOUT_MINOR */
  uint32_t state;          /* TshmExtentState */
  uint64_t generation;     /* increments each time the extent is reused; never 0 in use */
  uint64_t object_version; /* the object's version number */
  uint64_t byte_offset;    /* bytes from the extent start to the first data byte */
  uint64_t nbytes;         /* bytes spanned by the data; 0 for empty arrays */
  uint64_t extent_bytes;   /* bytes of the extent, header page included */
  uint8_t dtype_code;      /* DLPack DLDataTypeCode */
  uint8_t dtype_bits;      /* bits per lane */
  uint16_t dtype_lanes;    /* lanes, always 1 */
  int32_t ndim;            /* 0..TSHM_MAX_NDIM */
  int64_t shape[TSHM_MAX_NDIM];   /* elements; entries >= ndim are 0 */
  int64_t strides[TSHM_MAX_NDIM]; /* elements, never NULL-equivalent: always filled */
  uint32_t owner_uid;      /* uid of the creating client */
  uint32_t name_len;       /* bytes of name, no NUL counted */
  char name[TSHM_MAX_NAME + 1]; /* object name, NUL-terminated, for inspection only */
  uint8_t reserved[4096 - 64 - 2 * 8 * TSHM_MAX_NDIM - 8 - (TSHM_MAX_NAME + 1)];
} TshmExtentHeader;

#ifdef __cplusplus
}  /* extern "C" */
static_assert(sizeof(TshmSegmentHeader) == TSHM_HEADER_BYTES, "segment header is one page");
static_assert(sizeof(TshmExtentHeader) == TSHM_HEADER_BYTES, "extent header is one page");
#else
_Static_assert(sizeof(TshmSegmentHeader) == TSHM_HEADER_BYTES, "segment header is one page");
_Static_assert(sizeof(TshmExtentHeader) == TSHM_HEADER_BYTES, "extent header is one page");
#endif

#endif /* TENSORSHM_SEGMENT_LAYOUT_H_ */
