// Framing, verification and (un)packing of protocol messages.
#include "tensorshm/protocol.hpp"

#include <cstddef>
#include <cstring>
#include <limits>
#include <string>

#include "tensorshm/names.hpp"
#include "tensorshm/segment_layout.h"

namespace tensorshm::protocol {
namespace {

__extension__ typedef unsigned __int128 u128;

template <class T>
void put_le(std::byte* p, T v) {
  for (std::size_t i = 0; i < sizeof(T); ++i) p[i] = std::byte((v >> (8 * i)) & 0xff);
}
template <class T>
T get_le(const std::byte* p) {
  T v = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) v |= T(std::to_integer<std::uint8_t>(p[i])) << (8 * i);
  return v;
}

Error proto_error(std::string msg) { return Error{Errc::protocol_error, std::move(msg)}; }

// FlatBuffers 2.0's Verifier checks the alignment of a vector's length but not
// of its elements, so a hand-made payload can place a [long] at an address
// that is 4 modulo 8, and reading it is undefined behaviour (found by
// tests/fuzz). The payload starts 8-aligned (decode copies it when not), so
// checking the elements' addresses checks their offsets. Every [long] of the
// schema is listed here: shape and strides of CreateObject, CudaPut and
// ObjectDesc. An empty vector (the shape of a 0-d tensor) has no elements to
// read, and builders need not pad it: any address will do.
template <class V>
bool elements_aligned(const V* v) {
  return v == nullptr || v->size() == 0 ||
         reinterpret_cast<std::uintptr_t>(v->data()) % alignof(std::int64_t) == 0;
}
bool desc_aligned(const wire::ObjectDesc* d) {
  return d == nullptr || (elements_aligned(d->shape()) && elements_aligned(d->strides()));
}
bool vectors_aligned(const wire::Message& m) {
  switch (m.body_type()) {
    case wire::Body::CreateObject: {
      const auto* b = m.body_as_CreateObject();
      return elements_aligned(b->shape()) && elements_aligned(b->strides());
    }
    case wire::Body::CudaPut: {
      const auto* b = m.body_as_CudaPut();
      return elements_aligned(b->shape()) && elements_aligned(b->strides());
    }
    case wire::Body::PutBytes: {
      const auto* b = m.body_as_PutBytes();
      return elements_aligned(b->shape()) && elements_aligned(b->strides());
    }
    case wire::Body::CreateObjectReply: return desc_aligned(m.body_as_CreateObjectReply()->object());
    case wire::Body::SealReply: return desc_aligned(m.body_as_SealReply()->object());
    case wire::Body::GetReply: return desc_aligned(m.body_as_GetReply()->object());
    case wire::Body::StatReply: return desc_aligned(m.body_as_StatReply()->object());
    case wire::Body::CudaPutReply: return desc_aligned(m.body_as_CudaPutReply()->object());
    case wire::Body::ListReply:
      if (const auto* objects = m.body_as_ListReply()->objects())
        for (const auto* d : *objects)
          if (!desc_aligned(d)) return false;
      return true;
    default: return true;
  }
}

}  // namespace

std::array<std::byte, kHeaderSize> encode_header(const FrameHeader& h) {
  std::array<std::byte, kHeaderSize> b{};
  put_le(b.data(), h.magic);
  put_le(b.data() + 4, h.version);
  put_le(b.data() + 6, h.type);
  put_le(b.data() + 8, h.length);
  put_le(b.data() + 12, h.request_id);
  return b;
}

Result<FrameHeader> decode_header(std::span<const std::byte, kHeaderSize> b) {
  FrameHeader h;
  h.magic = get_le<std::uint32_t>(b.data());
  h.version = get_le<std::uint16_t>(b.data() + 4);
  h.type = get_le<std::uint16_t>(b.data() + 6);
  h.length = get_le<std::uint32_t>(b.data() + 8);
  h.request_id = get_le<std::uint32_t>(b.data() + 12);
  if (h.magic != kMagic) return proto_error("bad frame magic: not a tensorshm peer");
  if (h.length > kMaxPayload)
    return proto_error("frame of " + std::to_string(h.length) + " bytes exceeds the limit of " +
                       std::to_string(kMaxPayload));
  return h;
}

void frame_into(std::vector<std::byte>& out, flatbuffers::FlatBufferBuilder& fbb, wire::Body type,
                std::uint32_t request_id) {
  FrameHeader h;
  h.type = static_cast<std::uint16_t>(type);
  h.length = fbb.GetSize();
  h.request_id = request_id;
  out.resize(kHeaderSize + fbb.GetSize());
  auto hdr = encode_header(h);
  std::memcpy(out.data(), hdr.data(), kHeaderSize);
  std::memcpy(out.data() + kHeaderSize, fbb.GetBufferPointer(), fbb.GetSize());
}

void encode_into(std::vector<std::byte>& out, flatbuffers::FlatBufferBuilder& fbb, const wire::BodyUnion& body,
                 std::uint32_t request_id) {
  fbb.Clear();
  fbb.Finish(wire::CreateMessage(fbb, body.type, body.Pack(fbb)));
  frame_into(out, fbb, body.type, request_id);
}

std::vector<std::byte> encode(const wire::BodyUnion& body, std::uint32_t request_id) {
  flatbuffers::FlatBufferBuilder fbb(256);
  std::vector<std::byte> out;
  encode_into(out, fbb, body, request_id);
  return out;
}

std::vector<std::byte> encode_version_mismatch(std::uint16_t peer_version, std::uint32_t request_id) {
  std::string text = "protocol version mismatch: peer speaks version " + std::to_string(peer_version) +
                     ", this side speaks version " + std::to_string(kVersion) +
                     "; upgrade the older of the client and the daemon";
  FrameHeader h;
  h.type = kVersionMismatchType;
  h.length = static_cast<std::uint32_t>(text.size());
  h.request_id = request_id;
  std::vector<std::byte> out(kHeaderSize + text.size());
  auto hdr = encode_header(h);
  std::memcpy(out.data(), hdr.data(), kHeaderSize);
  std::memcpy(out.data() + kHeaderSize, text.data(), text.size());
  return out;
}

Result<const wire::Message*> verify(const FrameHeader& header, std::span<const std::byte> payload,
                                    std::vector<std::uint64_t>& scratch) {
  if (header.version != kVersion)
    return Error{Errc::version_mismatch, "protocol version mismatch: peer speaks version " +
                                             std::to_string(header.version) + ", this side speaks version " +
                                             std::to_string(kVersion)};
  if (payload.size() != header.length) return proto_error("payload length differs from the frame header");
  if (header.type == 0 || header.type > static_cast<std::uint16_t>(wire::Body::MAX))
    return proto_error("unknown message type " + std::to_string(header.type));
  // Smaller than a root offset and a vtable offset: not a FlatBuffer (and an
  // empty payload would hand memcpy and the Verifier a null pointer below;
  // found by tests/fuzz).
  if (payload.size() < 2 * sizeof(flatbuffers::uoffset_t))
    return proto_error("payload of " + std::to_string(payload.size()) + " bytes is too short to be a message");
  // FlatBuffers needs its buffer aligned for scalar reads: copy when it is not.
  const auto* data = reinterpret_cast<const std::uint8_t*>(payload.data());
  if (reinterpret_cast<std::uintptr_t>(data) % alignof(std::uint64_t) != 0) {
    scratch.resize((payload.size() + 7) / 8);
    std::memcpy(scratch.data(), payload.data(), payload.size());
    data = reinterpret_cast<const std::uint8_t*>(scratch.data());
  }
  flatbuffers::Verifier verifier(data, payload.size(), /*max_depth=*/16, kMaxTables);
  if (!wire::VerifyMessageBuffer(verifier)) return proto_error("payload failed FlatBuffers verification");
  const auto* msg = wire::GetMessage(data);
  if (static_cast<std::uint16_t>(msg->body_type()) != header.type)
    return proto_error("frame type " + std::to_string(header.type) + " differs from the payload's type " +
                       std::to_string(static_cast<unsigned>(msg->body_type())));
  if (msg->body() == nullptr) return proto_error("message has no body");
  if (!vectors_aligned(*msg)) return proto_error("payload holds a misaligned vector of 64-bit integers");
  return msg;
}

Result<std::unique_ptr<Message>> decode(const FrameHeader& header, std::span<const std::byte> payload) {
  std::vector<std::uint64_t> scratch;
  auto view = verify(header, payload, scratch);
  if (!view) return std::move(view).error();
  return std::unique_ptr<Message>((*view)->UnPack());
}

wire::ErrorReplyT make_error(const Error& e) {
  wire::ErrorReplyT r;
  r.code = static_cast<std::uint16_t>(e.code);
  r.message = e.message;
  return r;
}

const char* type_name(std::uint16_t type) noexcept {
  if (type == kVersionMismatchType) return "VersionMismatch";
  if (type > static_cast<std::uint16_t>(wire::Body::MAX)) return "Unknown";
  return wire::EnumNameBody(static_cast<wire::Body>(type));
}

Status check_segment_header(std::span<const std::byte> mapped, std::string_view what) {
  if (mapped.size() < sizeof(TshmSegmentHeader))
    return Error{Errc::protocol_error, "segment '" + std::string(what) + "' is smaller than its header (" +
                                          std::to_string(mapped.size()) + " bytes)"};
  // memcpy: the mapping is page-aligned, but the bytes are anyone's.
  std::uint64_t magic = 0;
  std::uint16_t major = 0, minor = 0;
  std::memcpy(&magic, mapped.data() + offsetof(TshmSegmentHeader, magic), sizeof magic);
  std::memcpy(&major, mapped.data() + offsetof(TshmSegmentHeader, major), sizeof major);
  std::memcpy(&minor, mapped.data() + offsetof(TshmSegmentHeader, minor), sizeof minor);
  if (magic != TSHM_SEGMENT_MAGIC)
    return Error{Errc::protocol_error, "segment '" + std::string(what) + "' has no tensorshm header"};
  if (major != TSHM_LAYOUT_MAJOR)
    return Error{Errc::version_mismatch, "segment '" + std::string(what) + "' uses layout version " +
                                             std::to_string(major) + "." + std::to_string(minor) +
                                             "; this side reads major version " + std::to_string(TSHM_LAYOUT_MAJOR)};
  return ok_status();
}

std::vector<std::int64_t> c_strides(std::span<const std::int64_t> shape) {
  // Unsigned arithmetic: a shape that check_layout() refuses (its element
  // count overflows) gives meaningless strides here, never undefined behaviour.
  std::vector<std::int64_t> s(shape.size());
  std::uint64_t acc = 1;
  for (std::size_t i = shape.size(); i-- > 0;) {
    s[i] = static_cast<std::int64_t>(acc);
    acc *= shape[i] > 0 ? static_cast<std::uint64_t>(shape[i]) : 1u;
  }
  return s;
}

Result<std::uint64_t> check_layout(DType dtype, std::span<const std::int64_t> shape,
                                   std::span<const std::int64_t> strides, std::uint64_t max_bytes) {
  if (!dtype_supported(dtype))
    return Error{Errc::unsupported_dtype, "unsupported dtype " + dtype_name(dtype) +
                                              "; supported: bool, int8..int64, uint8..uint64, float16/32/64, "
                                              "bfloat16, complex64/128, float8_*"};
  if (shape.size() > static_cast<std::size_t>(kMaxDims))
    return Error{Errc::invalid_argument,
                 "shape has " + std::to_string(shape.size()) + " dimensions; the limit is 32"};
  if (!strides.empty() && strides.size() != shape.size())
    return Error{Errc::invalid_argument, "strides have " + std::to_string(strides.size()) +
                                             " entries but the shape has " + std::to_string(shape.size())};
  const std::uint64_t item = dtype_itemsize(dtype);
  bool empty = false;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0)
      return Error{Errc::invalid_argument,
                   "dimension " + std::to_string(i) + " is negative (" + std::to_string(shape[i]) + ")"};
    if (shape[i] == 0) empty = true;
  }
  // numpy and torch index with signed 64-bit integers and refuse (numpy) or
  // mishandle (torch 1.13 aborts) arrays whose elements times the item size
  // do not fit one, whatever the strides: a broadcast view of a single byte
  // must still have a shape they can hold.
  {
    u128 elements = empty ? 0 : 1;
    for (std::int64_t d : shape) {
      elements *= static_cast<std::uint64_t>(d);
      if (elements > static_cast<u128>(std::numeric_limits<std::int64_t>::max()) / item)
        return Error{Errc::invalid_argument,
                     "the shape has more elements than numpy and torch can index (its elements times the item size "
                     "must stay below 2^63)"};
    }
  }
  if (empty) return std::uint64_t{0};
  // Byte span: 1 + sum((dim-1)*stride) elements; for C order that is the
  // element count, computed here without c_strides() so that it cannot overflow.
  u128 last = 0;  // index of the last element reached
  if (strides.empty()) {
    u128 count = 1;
    for (std::int64_t d : shape) {
      count *= static_cast<std::uint64_t>(d);
      if (count > std::numeric_limits<std::uint64_t>::max() / 16)
        return Error{Errc::invalid_argument, "shape's byte size overflows 64 bits"};
    }
    last = count - 1;
  }
  for (std::size_t i = 0; i < strides.size(); ++i) {
    if (strides[i] < 0)
      return Error{Errc::invalid_argument, "negative strides are not supported (dimension " + std::to_string(i) + ")"};
    last += static_cast<u128>(shape[i] - 1) * static_cast<std::uint64_t>(strides[i]);
    if (last > std::numeric_limits<std::uint64_t>::max() / 16)
      return Error{Errc::invalid_argument, "shape's byte size overflows 64 bits"};
  }
  u128 bytes = (last + 1) * item;
  if (bytes > std::numeric_limits<std::uint64_t>::max() / 2)
    return Error{Errc::invalid_argument, "shape's byte size overflows 64 bits"};
  if (bytes > max_bytes)
    return Error{Errc::invalid_argument, "the object needs " + std::to_string(static_cast<std::uint64_t>(bytes)) +
                                           " bytes, more than the largest object this daemon accepts (" + std::to_string(max_bytes) +
                                           " bytes); raise --max-object-size / --pool-size"};
  return static_cast<std::uint64_t>(bytes);
}

}  // namespace tensorshm::protocol
