// The wire protocol, in one place for the daemon and every client (house
// style 1, after Arrow Plasma's protocol.cc): framing, limits, encode and
// decode. No other code builds or parses protocol bytes.
//
// A frame is a 16-byte FrameHeader in little-endian byte order followed by
// `length` payload bytes. The payload is a FlatBuffer rooted at wire::Message
// (schema/tensorshm.fbs), except for frames of type kVersionMismatchType,
// whose payload is plain UTF-8 text so that peers of any version can read it.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "tensorshm/dtype.hpp"
#include "tensorshm/error.hpp"
#include "tensorshm/tensorshm_generated.h"

namespace tensorshm::protocol {

inline constexpr std::uint32_t kMagic = 0x4D485354;  // "TSHM" read as little-endian bytes
inline constexpr std::uint16_t kVersion = 1;
inline constexpr std::size_t kHeaderSize = 16;
/// Largest payload either side accepts. Frames announcing more are refused
/// before a byte of payload is read.
inline constexpr std::uint32_t kMaxPayload = 8u << 20;
/// Type of the text-only frame answering a version mismatch (stable forever).
inline constexpr std::uint16_t kVersionMismatchType = 0xFFFF;
/// Most FlatBuffer tables the verifier walks in one payload (a ListReply of
/// kMaxListLimit objects needs about 3 per object).
inline constexpr std::uint32_t kMaxTables = 1u << 20;
inline constexpr std::uint32_t kMaxListLimit = 100000;
/// About how many bytes of object descriptions one ListReply holds (far below
/// kMaxPayload whatever the names); a longer listing comes in pages
/// (List.start_after, ListReply.more_after).
inline constexpr std::size_t kListPageBytes = 1u << 20;
/// What one ObjectDesc costs in a reply, at most, besides its name and its
/// shape and strides (for kListPageBytes).
inline constexpr std::size_t kListEntryOverhead = 256;
inline constexpr int kMaxDims = 32;
/// HelloReply.features: the daemon understands PutBytes.
inline constexpr std::uint64_t kFeaturePutBytes = 1;
/// Every feature this build's daemon offers.
inline constexpr std::uint64_t kFeatures = kFeaturePutBytes;
/// Largest object a client puts with PutBytes (one round trip, its bytes in
/// the frame); larger ones go create, copy into the mapping, seal.
inline constexpr std::uint64_t kMaxPutBytes = 32u << 10;

struct FrameHeader {
  std::uint32_t magic = kMagic;
  std::uint16_t version = kVersion;
  std::uint16_t type = 0;          // wire::Body tag of the payload
  std::uint32_t length = 0;        // payload bytes
  std::uint32_t request_id = 0;    // echoed in the reply
};

/// Serialises a header (little-endian).
std::array<std::byte, kHeaderSize> encode_header(const FrameHeader& h);
/// Parses and checks magic and length. A foreign version is NOT an error here:
/// it comes back in the header so that the caller can answer with a
/// kVersionMismatchType frame (daemon) or a clear exception (client).
Result<FrameHeader> decode_header(std::span<const std::byte, kHeaderSize> bytes);

/// A decoded message: the object-API union of the payload.
using Message = wire::MessageT;

/// Encodes `body` into a complete frame (header + payload).
std::vector<std::byte> encode(const wire::BodyUnion& body, std::uint32_t request_id);
template <class T>
  requires(!std::is_same_v<std::remove_cvref_t<T>, wire::BodyUnion>)
std::vector<std::byte> encode(T&& body, std::uint32_t request_id) {
  wire::BodyUnion u;
  u.Set(std::forward<T>(body));
  return encode(u, request_id);
}
/// Encodes the text frame that answers a peer speaking another version.
std::vector<std::byte> encode_version_mismatch(std::uint16_t peer_version, std::uint32_t request_id);

/// Verifies the payload (FlatBuffers Verifier, bounded depth and table count),
/// checks that its union tag equals header.type, and unpacks it. Every
/// failure is Errc::protocol_error with a message saying what was wrong.
Result<std::unique_ptr<Message>> decode(const FrameHeader& header, std::span<const std::byte> payload);

/// The allocation-free forms used on the hot path (get, release):
/// verify() checks a payload exactly like decode() but returns a view into it
/// (valid while the payload bytes live; a misaligned payload is copied into
/// `scratch` first), and encode_into() reuses a builder and an output buffer.
Result<const wire::Message*> verify(const FrameHeader& header, std::span<const std::byte> payload,
                                    std::vector<std::uint64_t>& scratch);
void encode_into(std::vector<std::byte>& out, flatbuffers::FlatBufferBuilder& fbb, const wire::BodyUnion& body,
                 std::uint32_t request_id);
/// Frames a builder that holds a finished Message of the given type.
void frame_into(std::vector<std::byte>& out, flatbuffers::FlatBufferBuilder& fbb, wire::Body type,
                std::uint32_t request_id);

/// Builds the reply for an error.
wire::ErrorReplyT make_error(const Error& e);

/// Conversions between the wire's DType struct and the public DType.
inline wire::DType to_wire(DType t) { return wire::DType(t.code, t.bits, t.lanes); }
inline DType from_wire(const wire::DType& t) { return DType{t.code(), t.bits(), t.lanes()}; }

/// Human name of a message type, for logs ("Get", "CreateReply").
const char* type_name(std::uint16_t type) noexcept;

/// Checks a dtype/shape/strides triple the way both sides need it: supported
/// dtype, 0..32 dims, no negative dims, strides (elements) as many as dims or
/// none, a byte size that neither overflows nor exceeds `max_bytes`. On success
/// returns the number of bytes the data spans (0 for empty arrays).
Result<std::uint64_t> check_layout(DType dtype, std::span<const std::int64_t> shape,
                                   std::span<const std::int64_t> strides, std::uint64_t max_bytes);

/// Checks the header at the start of a mapped segment as a reader must
/// before trusting the mapping (the owner of a segment's objects maps it
/// writable and can write anything there): at least a header long, the
/// magic, a major layout version this side reads. protocol_error or
/// version_mismatch naming `what`; never reads past `mapped`.
Status check_segment_header(std::span<const std::byte> mapped, std::string_view what);

/// C-order strides (elements) for a shape.
std::vector<std::int64_t> c_strides(std::span<const std::int64_t> shape);

}  // namespace tensorshm::protocol
