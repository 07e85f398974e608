// The wire protocol with no socket: every message type survives encode ->
// decode_header -> decode with its fields intact; malformed frames (bad magic,
// oversized, truncated, garbage, mismatched type, unknown type, foreign
// version) are refused with the right error; layouts, names and dtypes are
// checked the way both sides rely on; segment_layout.h reads the same in C.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "segment_layout_c.h"
#include "tensorshm/dtype.hpp"
#include "tensorshm/error.hpp"
#include "tensorshm/names.hpp"
#include "tensorshm/protocol.hpp"
#include "tensorshm/segment_layout.h"
#include "../common/sample_desc.hpp"

using namespace tensorshm;
namespace proto = tensorshm::protocol;

namespace {

using Bytes = std::vector<std::byte>;

proto::FrameHeader header_of(const Bytes& frame) {
  REQUIRE(frame.size() >= proto::kHeaderSize);
  auto h = proto::decode_header(std::span<const std::byte, proto::kHeaderSize>(frame.data(), proto::kHeaderSize));
  REQUIRE_MESSAGE(h.has_value(), h.error().message);
  return *h;
}

std::span<const std::byte> payload_of(const Bytes& frame) {
  return std::span<const std::byte>(frame).subspan(proto::kHeaderSize);
}

Bytes header_bytes(const proto::FrameHeader& h) {
  auto a = proto::encode_header(h);
  return Bytes(a.begin(), a.end());
}

// Encodes `body`, decodes the header and the payload, checks the framing
// fields and that re-encoding the decoded message gives the same bytes, and
// returns the decoded body for field-by-field comparison.
template <class T>
std::unique_ptr<proto::Message> round_trip(const T& body, std::uint32_t request_id = 4242) {
  T copy(body);
  const Bytes frame = proto::encode(std::move(copy), request_id);
  const proto::FrameHeader h = header_of(frame);
  constexpr wire::Body expected = wire::BodyUnionTraits<T>::enum_value;
  CHECK(h.magic == proto::kMagic);
  CHECK(h.version == proto::kVersion);
  CHECK(h.type == static_cast<std::uint16_t>(expected));
  CHECK(h.request_id == request_id);
  CHECK(h.length == frame.size() - proto::kHeaderSize);
  auto msg = proto::decode(h, payload_of(frame));
  REQUIRE_MESSAGE(msg.has_value(), msg.error().message);
  REQUIRE((*msg)->body.type == expected);
  CHECK(proto::encode((*msg)->body, request_id) == frame);
  return std::move(msg).value();
}

template <class T>
const T& body_as(const std::unique_ptr<proto::Message>& m) {
  constexpr wire::Body expected = wire::BodyUnionTraits<T>::enum_value;  // a copy: the trait has no definition
  REQUIRE(m->body.type == expected);
  return *static_cast<const T*>(m->body.value);
}

using tshm_test::sample_desc;

void check_sample_desc(const std::unique_ptr<wire::ObjectDescT>& d) {
  REQUIRE(d != nullptr);
  CHECK(d->object_id == 77);
  CHECK(d->name == "camera/0/frame");
  CHECK(d->version == 12);
  REQUIRE(d->dtype != nullptr);
  CHECK(proto::from_wire(*d->dtype) == dtypes::kBfloat16);
  CHECK(d->shape == std::vector<std::int64_t>{2, 3, 4});
  CHECK(d->strides == std::vector<std::int64_t>{12, 4, 1});
  CHECK(d->nbytes == 48);
  CHECK(d->segment_id == 3);
  CHECK(d->extent_offset == 8192);
  CHECK(d->data_offset == 12288);
  CHECK(d->generation == 99);
  CHECK(d->owner_uid == 1000);
  CHECK(d->share == wire::Share::Group);
  CHECK(d->sealed);
  CHECK(d->created_unix_ns == 1700000000123456789ull);
  CHECK(d->leases == 5);
}

std::unique_ptr<wire::SegmentInfoT> sample_segment(std::uint32_t id, bool dedicated) {
  auto s = std::make_unique<wire::SegmentInfoT>();
  s->id = id;
  s->name = "tensorshm.test.p" + std::to_string(id);
  s->size = std::uint64_t{1} << 30;
  s->dedicated = dedicated;
  return s;
}

std::vector<std::uint8_t> counting_bytes(std::size_t n, std::uint8_t from) {
  std::vector<std::uint8_t> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::uint8_t>(from + i);
  return v;
}

Bytes valid_get_frame() {
  wire::GetT g;
  g.name = "some/name";
  g.newer_than = 3;
  g.timeout_ms = 250;
  return proto::encode(std::move(g), 9);
}

}  // namespace

// ---- one round trip per message type ----------------------------------------

TEST_CASE("hello_round_trips_with_its_fields") {
  wire::HelloT m;
  m.protocol_version = proto::kVersion;
  m.client_name = "trainer-3";
  m.pid = 31337;
  auto d = round_trip(m);
  const auto& b = body_as<wire::HelloT>(d);
  CHECK(b.protocol_version == proto::kVersion);
  CHECK(b.client_name == "trainer-3");
  CHECK(b.pid == 31337);
}

TEST_CASE("hello_reply_round_trips_with_its_segment_list") {
  wire::HelloReplyT m;
  m.protocol_version = proto::kVersion;
  m.daemon_version = "0.1.0";
  m.instance = "default";
  m.page_size = 4096;
  m.max_frame = proto::kMaxPayload;
  m.cuda_devices = 2;
  m.features = proto::kFeatures;
  m.segments.push_back(sample_segment(1, false));
  m.segments.push_back(sample_segment(2, false));
  auto d = round_trip(m);
  const auto& b = body_as<wire::HelloReplyT>(d);
  CHECK(b.features == proto::kFeaturePutBytes);
  CHECK(b.protocol_version == proto::kVersion);
  CHECK(b.daemon_version == "0.1.0");
  CHECK(b.instance == "default");
  CHECK(b.page_size == 4096);
  CHECK(b.max_frame == proto::kMaxPayload);
  CHECK(b.cuda_devices == 2);
  REQUIRE(b.segments.size() == 2);
  CHECK(b.segments[1]->id == 2);
  CHECK(b.segments[1]->name == "tensorshm.test.p2");
  CHECK(b.segments[1]->size == (std::uint64_t{1} << 30));
  CHECK_FALSE(b.segments[1]->dedicated);
}

TEST_CASE("create_object_round_trips_with_dtype_shape_strides_timeout_and_share") {
  wire::CreateObjectT m;
  m.name = "weights/layer.0";
  m.dtype = std::make_unique<wire::DType>(proto::to_wire(dtypes::kFloat16));
  m.shape = {4096, 0, 7};
  m.strides = {1, 4096, 4096};
  m.timeout_ms = 1500;
  m.share = wire::Share::Everyone;
  auto d = round_trip(m);
  const auto& b = body_as<wire::CreateObjectT>(d);
  CHECK(b.name == "weights/layer.0");
  REQUIRE(b.dtype != nullptr);
  CHECK(proto::from_wire(*b.dtype) == dtypes::kFloat16);
  CHECK(b.shape == std::vector<std::int64_t>{4096, 0, 7});
  CHECK(b.strides == std::vector<std::int64_t>{1, 4096, 4096});
  CHECK(b.timeout_ms == 1500);
  CHECK(b.share == wire::Share::Everyone);
}

TEST_CASE("seal_round_trips_with_its_object_id") {
  wire::SealT m;
  m.object_id = 0xFEEDFACECAFEull;
  auto d = round_trip(m);
  CHECK(body_as<wire::SealT>(d).object_id == 0xFEEDFACECAFEull);
}

TEST_CASE("abort_round_trips_with_its_object_id") {
  wire::AbortT m;
  m.object_id = 17;
  auto d = round_trip(m);
  CHECK(body_as<wire::AbortT>(d).object_id == 17);
}

TEST_CASE("get_round_trips_with_name_newer_than_and_timeout") {
  wire::GetT m;
  m.name = "a/b";
  m.newer_than = 41;
  m.timeout_ms = 60000;
  auto d = round_trip(m);
  const auto& b = body_as<wire::GetT>(d);
  CHECK(b.name == "a/b");
  CHECK(b.newer_than == 41);
  CHECK(b.timeout_ms == 60000);
}

TEST_CASE("release_round_trips_with_its_object_id_and_no_reply_flag") {
  wire::ReleaseT m;
  m.object_id = std::numeric_limits<std::uint64_t>::max();
  auto d = round_trip(m);
  CHECK(body_as<wire::ReleaseT>(d).object_id == std::numeric_limits<std::uint64_t>::max());
  CHECK_FALSE(body_as<wire::ReleaseT>(d).no_reply);
  m.no_reply = true;
  CHECK(body_as<wire::ReleaseT>(round_trip(m)).no_reply);
}

TEST_CASE("delete_round_trips_with_its_name") {
  wire::DeleteT m;
  m.name = "old/thing";
  auto d = round_trip(m);
  CHECK(body_as<wire::DeleteT>(d).name == "old/thing");
}

TEST_CASE("list_round_trips_with_prefix_and_limit") {
  wire::ListT m;
  m.prefix = "camera/";
  m.limit = 10;
  auto d = round_trip(m);
  CHECK(body_as<wire::ListT>(d).prefix == "camera/");
  CHECK(body_as<wire::ListT>(d).limit == 10);
}

TEST_CASE("list_reply_round_trips_with_every_object_and_the_truncated_flag") {
  wire::ListReplyT m;
  m.objects.push_back(sample_desc());
  m.objects.push_back(sample_desc());
  m.objects[1]->name = "camera/1/frame";
  m.truncated = true;
  auto d = round_trip(m);
  const auto& b = body_as<wire::ListReplyT>(d);
  REQUIRE(b.objects.size() == 2);
  check_sample_desc(b.objects[0]);
  CHECK(b.objects[1]->name == "camera/1/frame");
  CHECK(b.truncated);
}

TEST_CASE("stat_round_trips_with_its_name") {
  wire::StatT m;
  m.name = "x";
  auto d = round_trip(m);
  CHECK(body_as<wire::StatT>(d).name == "x");
}

TEST_CASE("stats_round_trips_although_it_has_no_fields") {
  auto d = round_trip(wire::StatsT{});
  CHECK(d->body.AsStats() != nullptr);
}

TEST_CASE("stats_reply_round_trips_with_every_counter") {
  wire::StatsReplyT m;
  m.pool_bytes = 1;
  m.pool_used_bytes = 2;
  m.dedicated_bytes = 3;
  m.segments = 4;
  m.objects = 5;
  m.versions = 6;
  m.open_creates = 7;
  m.leases = 8;
  m.clients = 9;
  m.puts = 10;
  m.gets = 11;
  m.copies = 12;
  m.bytes_copied = 13;
  m.quarantined_bytes = 4096;
  m.cuda_devices = 14;
  m.uptime_s = 15.5;
  auto d = round_trip(m);
  const auto& b = body_as<wire::StatsReplyT>(d);
  CHECK(b.pool_bytes == 1);
  CHECK(b.pool_used_bytes == 2);
  CHECK(b.dedicated_bytes == 3);
  CHECK(b.segments == 4);
  CHECK(b.objects == 5);
  CHECK(b.versions == 6);
  CHECK(b.open_creates == 7);
  CHECK(b.leases == 8);
  CHECK(b.clients == 9);
  CHECK(b.puts == 10);
  CHECK(b.gets == 11);
  CHECK(b.copies == 12);
  CHECK(b.bytes_copied == 13);
  CHECK(b.quarantined_bytes == 4096);
  CHECK(b.cuda_devices == 14);
  CHECK(b.uptime_s == 15.5);
}

TEST_CASE("map_segment_round_trips_with_id_and_writable_flag") {
  wire::MapSegmentT m;
  m.segment_id = 6;
  m.writable = true;
  auto d = round_trip(m);
  CHECK(body_as<wire::MapSegmentT>(d).segment_id == 6);
  CHECK(body_as<wire::MapSegmentT>(d).writable);
}

TEST_CASE("map_segment_reply_round_trips_with_the_segment_info") {
  wire::MapSegmentReplyT m;
  m.segment = sample_segment(9, true);
  m.writable = false;
  auto d = round_trip(m);
  const auto& b = body_as<wire::MapSegmentReplyT>(d);
  REQUIRE(b.segment != nullptr);
  CHECK(b.segment->id == 9);
  CHECK(b.segment->name == "tensorshm.test.p9");
  CHECK(b.segment->dedicated);
  CHECK_FALSE(b.writable);
}

TEST_CASE("cuda_put_round_trips_with_its_handles_and_layout") {
  wire::CudaPutT m;
  m.name = "gpu/out";
  m.dtype = std::make_unique<wire::DType>(proto::to_wire(dtypes::kFloat32));
  m.shape = {8, 8};
  m.strides = {8, 1};
  m.device = 1;
  m.device_uuid = counting_bytes(16, 100);
  m.mem_handle = counting_bytes(64, 0);
  m.alloc_offset = 512;
  m.event_handle = counting_bytes(64, 64);
  m.timeout_ms = 10;
  m.share = wire::Share::Group;
  auto d = round_trip(m);
  const auto& b = body_as<wire::CudaPutT>(d);
  CHECK(b.name == "gpu/out");
  REQUIRE(b.dtype != nullptr);
  CHECK(proto::from_wire(*b.dtype) == dtypes::kFloat32);
  CHECK(b.shape == std::vector<std::int64_t>{8, 8});
  CHECK(b.strides == std::vector<std::int64_t>{8, 1});
  CHECK(b.device == 1);
  CHECK(b.device_uuid == counting_bytes(16, 100));
  CHECK(b.mem_handle == counting_bytes(64, 0));
  CHECK(b.alloc_offset == 512);
  CHECK(b.event_handle == counting_bytes(64, 64));
  CHECK(b.timeout_ms == 10);
  CHECK(b.share == wire::Share::Group);
}

TEST_CASE("put_bytes_round_trips_with_its_layout_and_data") {
  wire::PutBytesT m;
  m.name = "small/0";
  m.dtype = std::make_unique<wire::DType>(proto::to_wire(dtypes::kBfloat16));
  m.shape = {2, 3};
  m.strides = {1, 2};
  m.timeout_ms = 7;
  m.share = wire::Share::Everyone;
  m.data = counting_bytes(12, 3);
  auto d = round_trip(m);
  const auto& b = body_as<wire::PutBytesT>(d);
  CHECK(b.name == "small/0");
  REQUIRE(b.dtype != nullptr);
  CHECK(proto::from_wire(*b.dtype) == dtypes::kBfloat16);
  CHECK(b.shape == std::vector<std::int64_t>{2, 3});
  CHECK(b.strides == std::vector<std::int64_t>{1, 2});
  CHECK(b.timeout_ms == 7);
  CHECK(b.share == wire::Share::Everyone);
  CHECK(b.data == counting_bytes(12, 3));
}

TEST_CASE("requests_whose_64_bit_vectors_are_misaligned_are_refused") {
  // The verifier checks only a vector's 4-byte length; shapes and strides are
  // read as 64-bit integers. Build a PutBytes (and a CreateObject) whose shape
  // (two int64) is laid down as four uint32, followed in the builder by 0..3
  // uint32 of padding: some of these land 4 bytes off an 8-byte boundary.
  for (const bool put_bytes : {true, false}) {
    CAPTURE(put_bytes);
    int refused = 0, accepted = 0;
    for (int pad = 0; pad < 4; ++pad) {
      CAPTURE(pad);
      flatbuffers::FlatBufferBuilder fbb;
      const auto name = fbb.CreateString("small/0");
      fbb.StartVector(4, sizeof(std::uint32_t));
      for (const std::uint32_t half : {0u, 2u, 0u, 4u}) fbb.PushElement(half);  // back to front: {4, 2} as int64
      const flatbuffers::Offset<flatbuffers::Vector<std::int64_t>> shape(fbb.EndVector(2));
      for (int i = 0; i < pad; ++i) fbb.PushElement(std::uint32_t{0});
      const wire::DType dt = proto::to_wire(dtypes::kUInt8);
      const wire::Body type = put_bytes ? wire::Body::PutBytes : wire::Body::CreateObject;
      const auto body = put_bytes ? wire::CreatePutBytes(fbb, name, &dt, shape).Union()
                                  : wire::CreateCreateObject(fbb, name, &dt, shape).Union();
      fbb.Finish(wire::CreateMessage(fbb, type, body));
      Bytes frame;
      proto::frame_into(frame, fbb, type, 1);
      std::vector<std::uint64_t> scratch;
      auto v = proto::verify(header_of(frame), payload_of(frame), scratch);
      if (v) {
        ++accepted;
        const auto* s = put_bytes ? (*v)->body_as_PutBytes()->shape() : (*v)->body_as_CreateObject()->shape();
        CHECK(reinterpret_cast<std::uintptr_t>(s->data()) % 8 == 0);
        CHECK(std::vector<std::int64_t>(s->begin(), s->end()) == std::vector<std::int64_t>{4, 2});
      } else {
        ++refused;
        CHECK(v.error().code == Errc::protocol_error);
        CHECK(v.error().message.find("misaligned vector of 64-bit integers") != std::string::npos);
      }
    }
    CHECK(refused > 0);
    CHECK(accepted > 0);
  }
}

TEST_CASE("hello_reply_from_a_daemon_without_features_reads_as_none") {
  wire::HelloReplyT m;  // as an older daemon sends it: no features field
  m.protocol_version = proto::kVersion;
  auto d = round_trip(m);
  CHECK(body_as<wire::HelloReplyT>(d).features == 0);
}

TEST_CASE("cuda_forget_round_trips_with_its_handle") {
  wire::CudaForgetT m;
  m.mem_handle = counting_bytes(64, 7);
  auto d = round_trip(m);
  CHECK(body_as<wire::CudaForgetT>(d).mem_handle == counting_bytes(64, 7));
}

TEST_CASE("ok_round_trips_although_it_has_no_fields") {
  auto d = round_trip(wire::OkT{});
  CHECK(d->body.AsOk() != nullptr);
}

TEST_CASE("error_reply_round_trips_with_code_and_message") {
  auto d = round_trip(proto::make_error(Error{Errc::pool_exhausted, "pool exhausted: 'x' needs 4 GiB"}));
  const auto& b = body_as<wire::ErrorReplyT>(d);
  CHECK(static_cast<Errc>(b.code) == Errc::pool_exhausted);
  CHECK(b.message == "pool exhausted: 'x' needs 4 GiB");
}

TEST_CASE_TEMPLATE("replies_carrying_an_object_round_trip_with_the_whole_descriptor", T, wire::CreateObjectReplyT,
                   wire::SealReplyT, wire::GetReplyT, wire::StatReplyT, wire::CudaPutReplyT) {
  T m;
  m.object = sample_desc();
  auto d = round_trip(m);
  check_sample_desc(body_as<T>(d).object);
}

TEST_CASE("every_body_type_has_a_round_trip_test_and_a_name") {
  // The round trips in this file cover Body::Hello .. Body::PutBytes; a
  // new message type added to the schema shows up here first.
  CHECK(static_cast<int>(wire::Body::MAX) == 25);
  for (int t = 1; t <= static_cast<int>(wire::Body::MAX); ++t)
    CHECK(std::string(proto::type_name(static_cast<std::uint16_t>(t))) != "Unknown");
  CHECK(std::string(proto::type_name(static_cast<std::uint16_t>(wire::Body::Get))) == "Get");
  CHECK(std::string(proto::type_name(proto::kVersionMismatchType)) == "VersionMismatch");
  CHECK(std::string(proto::type_name(999)) == "Unknown");
}

TEST_CASE("a_payload_at_an_odd_address_still_decodes") {
  const Bytes frame = valid_get_frame();
  const auto h = header_of(frame);
  Bytes shifted(frame.size() + 1);
  std::memcpy(shifted.data() + 1, frame.data() + proto::kHeaderSize, h.length);
  auto m = proto::decode(h, std::span<const std::byte>(shifted).subspan(1, h.length));
  REQUIRE_MESSAGE(m.has_value(), m.error().message);
  CHECK((*m)->body.AsGet()->name == "some/name");
}

// ---- malformed frames --------------------------------------------------------

TEST_CASE("a_header_with_bad_magic_is_a_protocol_error") {
  Bytes frame = valid_get_frame();
  frame[0] = std::byte{'X'};
  auto h = proto::decode_header(std::span<const std::byte, proto::kHeaderSize>(frame.data(), proto::kHeaderSize));
  REQUIRE_FALSE(h.has_value());
  CHECK(h.error().code == Errc::protocol_error);
  CHECK(h.error().message.find("magic") != std::string::npos);
}

TEST_CASE("a_header_announcing_more_than_the_maximum_payload_is_refused_before_reading_it") {
  proto::FrameHeader big;
  big.type = static_cast<std::uint16_t>(wire::Body::Get);
  big.length = proto::kMaxPayload + 1;
  const Bytes hb = header_bytes(big);
  auto h = proto::decode_header(std::span<const std::byte, proto::kHeaderSize>(hb.data(), proto::kHeaderSize));
  REQUIRE_FALSE(h.has_value());
  CHECK(h.error().code == Errc::protocol_error);
  CHECK(h.error().message.find("exceeds") != std::string::npos);

  big.length = proto::kMaxPayload;  // exactly the limit is allowed
  const Bytes ok = header_bytes(big);
  CHECK(proto::decode_header(std::span<const std::byte, proto::kHeaderSize>(ok.data(), proto::kHeaderSize)));
}

TEST_CASE("a_header_decodes_its_fields_in_little_endian_order") {
  proto::FrameHeader h;
  h.type = 0x0102;
  h.length = 0x00020304;
  h.request_id = 0xA1B2C3D4;
  const Bytes b = header_bytes(h);
  CHECK(b[0] == std::byte{'T'});
  CHECK(b[1] == std::byte{'S'});
  CHECK(b[2] == std::byte{'H'});
  CHECK(b[3] == std::byte{'M'});
  CHECK(b[6] == std::byte{0x02});
  CHECK(b[8] == std::byte{0x04});
  CHECK(b[12] == std::byte{0xD4});
  auto back = proto::decode_header(std::span<const std::byte, proto::kHeaderSize>(b.data(), proto::kHeaderSize));
  REQUIRE(back);
  CHECK(back->type == 0x0102);
  CHECK(back->length == 0x00020304);
  CHECK(back->request_id == 0xA1B2C3D4);
}

TEST_CASE("a_payload_shorter_than_its_header_says_is_a_protocol_error") {
  const Bytes frame = valid_get_frame();
  const auto h = header_of(frame);
  auto m = proto::decode(h, payload_of(frame).first(h.length - 1));
  REQUIRE_FALSE(m.has_value());
  CHECK(m.error().code == Errc::protocol_error);
}

TEST_CASE("a_payload_cut_short_of_its_data_fails_verification") {
  const Bytes frame = valid_get_frame();
  const auto full = header_of(frame);
  for (std::uint32_t n = 0; n < full.length; ++n) {
    auto h = full;
    h.length = n;  // the header agrees with the cut payload: only the verifier can tell
    auto m = proto::decode(h, payload_of(frame).first(n));
    if (!m) {
      CHECK(m.error().code == Errc::protocol_error);
      continue;
    }
    // Only trailing alignment padding may go unnoticed, and then nothing is misread.
    CHECK_MESSAGE(n + 8 > full.length, "a payload cut to ", n, " of ", full.length, " bytes was accepted");
    REQUIRE((*m)->body.AsGet() != nullptr);
    CHECK((*m)->body.AsGet()->name == "some/name");
    CHECK((*m)->body.AsGet()->newer_than == 3);
    CHECK((*m)->body.AsGet()->timeout_ms == 250);
  }
}

TEST_CASE("garbage_payloads_fail_verification") {
  proto::FrameHeader h;
  h.type = static_cast<std::uint16_t>(wire::Body::Get);
  std::mt19937 rng(20240601);
  for (int i = 0; i < 500; ++i) {
    Bytes junk(4 + rng() % 252);
    for (auto& b : junk) b = std::byte(rng() & 0xff);
    if (i == 0) std::fill(junk.begin(), junk.end(), std::byte{0});
    if (i == 1) std::fill(junk.begin(), junk.end(), std::byte{0xff});
    h.length = static_cast<std::uint32_t>(junk.size());
    auto m = proto::decode(h, junk);
    CHECK_MESSAGE(!m.has_value(), "garbage payload #", i, " was accepted");
    if (!m) CHECK(m.error().code == Errc::protocol_error);
  }
}

TEST_CASE("a_header_type_that_differs_from_the_payload_union_tag_is_a_protocol_error") {
  const Bytes frame = valid_get_frame();
  auto h = header_of(frame);
  h.type = static_cast<std::uint16_t>(wire::Body::Stat);
  auto m = proto::decode(h, payload_of(frame));
  REQUIRE_FALSE(m.has_value());
  CHECK(m.error().code == Errc::protocol_error);
  CHECK(m.error().message.find("differs") != std::string::npos);
}

TEST_CASE("an_unknown_message_type_is_a_protocol_error") {
  const Bytes frame = valid_get_frame();
  for (std::uint16_t type : {std::uint16_t{0}, static_cast<std::uint16_t>(static_cast<int>(wire::Body::MAX) + 1),
                             std::uint16_t{200}}) {
    auto h = header_of(frame);
    h.type = type;
    auto m = proto::decode(h, payload_of(frame));
    REQUIRE_FALSE(m.has_value());
    CHECK(m.error().code == Errc::protocol_error);
  }
}

TEST_CASE("a_message_without_a_body_is_a_protocol_error") {
  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(wire::CreateMessage(fbb));
  proto::FrameHeader h;
  h.type = static_cast<std::uint16_t>(wire::Body::Hello);
  h.length = fbb.GetSize();
  auto m = proto::decode(h, std::as_bytes(std::span(fbb.GetBufferPointer(), fbb.GetSize())));
  REQUIRE_FALSE(m.has_value());
  CHECK(m.error().code == Errc::protocol_error);
}

TEST_CASE("a_frame_of_a_foreign_version_passes_the_header_check_and_fails_decode_with_version_mismatch") {
  const Bytes frame = valid_get_frame();
  auto h = header_of(frame);
  h.version = proto::kVersion + 1;
  const Bytes hb = header_bytes(h);
  auto back = proto::decode_header(std::span<const std::byte, proto::kHeaderSize>(hb.data(), proto::kHeaderSize));
  REQUIRE(back.has_value());  // the caller must see the version to answer it
  CHECK(back->version == proto::kVersion + 1);
  auto m = proto::decode(*back, payload_of(frame));
  REQUIRE_FALSE(m.has_value());
  CHECK(m.error().code == Errc::version_mismatch);
}

TEST_CASE("the_version_mismatch_frame_is_plain_text_naming_both_versions") {
  const Bytes frame = proto::encode_version_mismatch(7, 55);
  const auto h = header_of(frame);
  CHECK(h.type == proto::kVersionMismatchType);
  CHECK(h.version == proto::kVersion);
  CHECK(h.request_id == 55);
  CHECK(h.length == frame.size() - proto::kHeaderSize);
  const std::string text(reinterpret_cast<const char*>(frame.data()) + proto::kHeaderSize, h.length);
  CHECK(text.find("version 7") != std::string::npos);
  CHECK(text.find("version " + std::to_string(proto::kVersion)) != std::string::npos);
}

// ---- layouts -------------------------------------------------------------------

namespace {
Result<std::uint64_t> layout(DType t, std::vector<std::int64_t> shape, std::vector<std::int64_t> strides = {},
                             std::uint64_t max_bytes = std::uint64_t{1} << 40) {
  return proto::check_layout(t, shape, strides, max_bytes);
}
// The bytes a valid layout spans.
std::uint64_t span_bytes(DType t, std::vector<std::int64_t> shape, std::vector<std::int64_t> strides = {},
                         std::uint64_t max_bytes = std::uint64_t{1} << 40) {
  auto r = layout(t, std::move(shape), std::move(strides), max_bytes);
  REQUIRE_MESSAGE(r.has_value(), r.error().message);
  return r.value();
}
}  // namespace

TEST_CASE("check_layout_returns_the_bytes_a_dense_array_spans") {
  CHECK(span_bytes(dtypes::kFloat32, {2, 3}) == 24);
  CHECK(span_bytes(dtypes::kComplex128, {5}) == 80);
  CHECK(span_bytes(dtypes::kUInt8, {}) == 1);  // a scalar
  CHECK(span_bytes(dtypes::kFloat64, {3, 0, 2}) == 0);
  CHECK(span_bytes(dtypes::kFloat32, std::vector<std::int64_t>(32, 1)) == 4);
}

TEST_CASE("check_layout_honours_given_strides_in_elements") {
  CHECK(span_bytes(dtypes::kFloat32, {2, 3}, {1, 2}) == 24);   // Fortran order
  CHECK(span_bytes(dtypes::kFloat32, {2, 3}, {10, 1}) == 52);  // padded rows: last element at 12
  CHECK(span_bytes(dtypes::kFloat32, {5}, {0}) == 4);          // broadcast: one element
}

TEST_CASE("check_layout_refuses_negative_dims") {
  auto r = layout(dtypes::kFloat32, {3, -1});
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == Errc::invalid_argument);
  CHECK(r.error().message.find("negative") != std::string::npos);
}

TEST_CASE("check_layout_refuses_shapes_numpy_and_torch_cannot_index_even_as_a_one_byte_broadcast") {
  const std::int64_t big = std::int64_t{1} << 32;
  auto bomb = layout(dtypes::kUInt8, {big, big, big}, {0, 0, 0});  // 2^96 elements of one byte
  REQUIRE_FALSE(bomb.has_value());
  CHECK(bomb.error().code == Errc::invalid_argument);
  CHECK(bomb.error().message.find("numpy and torch") != std::string::npos);
  // The bound is elements times the item size below 2^63, whatever the dtype.
  CHECK(span_bytes(dtypes::kUInt8, {std::int64_t{1} << 31, std::int64_t{1} << 31}, {0, 0}) == 1);
  CHECK_FALSE(layout(dtypes::kComplex128, {std::int64_t{1} << 30, std::int64_t{1} << 30}, {0, 0}).has_value());
  CHECK(span_bytes(dtypes::kComplex128, {std::int64_t{1} << 29, std::int64_t{1} << 29}, {0, 0}) == 16);
  CHECK(span_bytes(dtypes::kFloat32, {0, big, big, big}) == 0);  // empty: nothing to index
}

TEST_CASE("a_readers_check_of_a_segment_header_refuses_whatever_is_not_one") {
  alignas(8) std::array<std::byte, TSHM_HEADER_BYTES> page{};
  auto* h = reinterpret_cast<TshmSegmentHeader*>(page.data());
  h->magic = TSHM_SEGMENT_MAGIC;
  h->major = TSHM_LAYOUT_MAJOR;
  CHECK(proto::check_segment_header(page, "s").has_value());
  auto short_one = proto::check_segment_header(std::span(page).first(100), "s");
  REQUIRE_FALSE(short_one.has_value());
  CHECK(short_one.error().code == Errc::protocol_error);
  h->major = TSHM_LAYOUT_MAJOR + 1;
  auto newer = proto::check_segment_header(page, "s");
  REQUIRE_FALSE(newer.has_value());
  CHECK(newer.error().code == Errc::version_mismatch);
  h->major = TSHM_LAYOUT_MAJOR;
  h->magic ^= 1;  // an owner scribbled over it
  auto scribbled = proto::check_segment_header(page, "s");
  REQUIRE_FALSE(scribbled.has_value());
  CHECK(scribbled.error().message.find("no tensorshm header") != std::string::npos);
}

TEST_CASE("check_layout_refuses_more_than_32_dims") {
  auto r = layout(dtypes::kFloat32, std::vector<std::int64_t>(33, 1));
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == Errc::invalid_argument);
  CHECK(r.error().message.find("32") != std::string::npos);
}

TEST_CASE("check_layout_refuses_a_byte_size_that_overflows") {
  const std::int64_t huge = std::numeric_limits<std::int64_t>::max();
  for (auto shape : {std::vector<std::int64_t>{std::int64_t{1} << 40, std::int64_t{1} << 40},
                     std::vector<std::int64_t>{huge, 2}, std::vector<std::int64_t>{huge}}) {
    auto r = layout(dtypes::kComplex128, shape, {}, std::numeric_limits<std::uint64_t>::max());
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == Errc::invalid_argument);
  }
}

TEST_CASE("check_layout_refuses_an_object_larger_than_the_limit") {
  CHECK(span_bytes(dtypes::kUInt8, {1000}, {}, 1000) == 1000);
  auto r = layout(dtypes::kUInt8, {1001}, {}, 1000);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == Errc::invalid_argument);
  CHECK(r.error().message.find("1001") != std::string::npos);
}

TEST_CASE("check_layout_refuses_strides_of_the_wrong_count_or_sign") {
  auto few = layout(dtypes::kFloat32, {2, 3}, {1});
  REQUIRE_FALSE(few.has_value());
  CHECK(few.error().code == Errc::invalid_argument);
  auto negative = layout(dtypes::kFloat32, {2, 3}, {-3, 1});
  REQUIRE_FALSE(negative.has_value());
  CHECK(negative.error().code == Errc::invalid_argument);
}

TEST_CASE("check_layout_refuses_unsupported_dtypes") {
  for (DType t : {DType{3, 64, 1}, DType{2, 32, 2}, DType{2, 8, 1}, DType{0, 7, 1}, DType{99, 8, 1}}) {
    auto r = layout(t, {4});
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == Errc::unsupported_dtype);
  }
}

TEST_CASE("c_strides_are_row_major_and_treat_zero_dims_as_one") {
  CHECK(proto::c_strides(std::vector<std::int64_t>{2, 3, 4}) == std::vector<std::int64_t>{12, 4, 1});
  CHECK(proto::c_strides(std::vector<std::int64_t>{2, 0, 4}) == std::vector<std::int64_t>{4, 4, 1});
  CHECK(proto::c_strides(std::vector<std::int64_t>{}).empty());
}

// ---- names ---------------------------------------------------------------------

namespace {
void check_invalid_name(const std::string& name) {
  auto s = validate_name(name);
  CHECK_MESSAGE(!s.has_value(), "accepted '", printable_name(name), "'");
  if (!s) CHECK(s.error().code == Errc::invalid_name);
}
}  // namespace

TEST_CASE("ordinary_names_are_valid") {
  for (const char* n : {"x", "camera/0/frame", "a.b-c_d:e", "weights/layer.0/W", "~tmp"}) CHECK(validate_name(n));
  CHECK(validate_name(std::string(255, 'n')));
}

TEST_CASE("an_empty_name_is_invalid") { check_invalid_name(""); }

TEST_CASE("a_name_of_256_bytes_is_invalid") {
  check_invalid_name(std::string(256, 'n'));
  auto s = validate_name(std::string(256, 'n'));
  REQUIRE_FALSE(s.has_value());
  CHECK(s.error().message.find("255") != std::string::npos);
}

TEST_CASE("names_with_spaces_or_non_printable_bytes_are_invalid") {
  check_invalid_name("a b");
  check_invalid_name(std::string("a\0b", 3));
  check_invalid_name("tab\there");
  check_invalid_name("del\x7f");
  check_invalid_name("caf\xc3\xa9");
}

TEST_CASE("names_containing_dot_dot_are_invalid") {
  check_invalid_name("..");
  check_invalid_name("a/../b");
  check_invalid_name("a..b");
}

TEST_CASE("names_with_a_leading_or_trailing_slash_or_an_empty_component_are_invalid") {
  check_invalid_name("/a");
  check_invalid_name("a/");
  check_invalid_name("a//b");
  check_invalid_name("/");
}

TEST_CASE("an_invalid_name_is_quoted_escaped_in_the_error") {
  auto s = validate_name("bad\nname");
  REQUIRE_FALSE(s.has_value());
  CHECK(s.error().message.find("bad\\x0aname") != std::string::npos);
  CHECK(printable_name(std::string(100, 'z')).size() == 83);  // 80 bytes and "..."
}

// ---- dtypes and errors ------------------------------------------------------------

TEST_CASE("every_canonical_dtype_name_round_trips_and_is_supported") {
  for (const char* n : {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
                        "float32", "float64", "bfloat16", "complex64", "complex128", "float8_e3m4", "float8_e4m3",
                        "float8_e4m3b11fnuz", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2",
                        "float8_e5m2fnuz", "float8_e8m0fnu"}) {
    auto t = dtype_from_name(n);
    REQUIRE_MESSAGE(t.has_value(), n);
    CHECK(dtype_supported(*t));
    CHECK(dtype_name(*t) == n);
    CHECK(layout(*t, {3}).has_value());
  }
}

TEST_CASE("numpy_and_torch_spellings_parse_to_the_same_dtypes") {
  CHECK(dtype_from_name("<f4") == dtypes::kFloat32);
  CHECK(dtype_from_name("=f8") == dtypes::kFloat64);
  CHECK(dtype_from_name("|u1") == dtypes::kUInt8);
  CHECK(dtype_from_name("?") == dtypes::kBool);
  CHECK(dtype_from_name("torch.float16") == dtypes::kFloat16);
  CHECK(dtype_from_name("c16") == dtypes::kComplex128);
  CHECK_FALSE(dtype_from_name(">f4").has_value());  // big-endian is not the host's order
  CHECK_FALSE(dtype_from_name("float128").has_value());
  CHECK_FALSE(dtype_from_name("").has_value());
}

TEST_CASE("unknown_dtypes_are_named_by_their_dlpack_fields") {
  CHECK(dtype_name(DType{3, 64, 1}) == "dtype(code=3,bits=64,lanes=1)");
  CHECK_FALSE(dtype_supported(DType{3, 64, 1}));
  CHECK(dtype_itemsize(dtypes::kComplex128) == 16);
  CHECK(dtype_itemsize(dtypes::kBool) == 1);
  CHECK(dtype_itemsize(dtypes::kBfloat16) == 2);
}

TEST_CASE("every_error_code_has_a_distinct_name") {
  std::vector<std::string> seen;
  for (int c = 0; c <= static_cast<int>(Errc::internal); ++c) {
    std::string n(errc_name(static_cast<Errc>(c)));
    CHECK(n != "unknown");
    for (const auto& s : seen) CHECK(s != n);
    seen.push_back(n);
  }
  CHECK(errc_name(Errc::pool_exhausted) == "pool_exhausted");
  const Error e = posix_error("shm_open", "tensorshm.x.p1", ENOSPC);
  CHECK(e.code == Errc::system_error);
  CHECK(e.message.find("shm_open(tensorshm.x.p1)") == 0);
  CHECK(e.message.find("errno 28") != std::string::npos);
}

// ---- segment_layout.h in C and C++ -------------------------------------------------

TEST_CASE("the_segment_layout_is_the_same_in_c_and_cpp") {
  TshmCLayout c{};
  tshm_c_layout(&c);
  CHECK(c.segment_header_size == sizeof(TshmSegmentHeader));
  CHECK(c.segment_instance_offset == offsetof(TshmSegmentHeader, instance));
  CHECK(c.segment_reserved_offset == offsetof(TshmSegmentHeader, reserved));
  CHECK(c.extent_header_size == sizeof(TshmExtentHeader));
  CHECK(c.extent_ndim_offset == offsetof(TshmExtentHeader, ndim));
  CHECK(c.extent_shape_offset == offsetof(TshmExtentHeader, shape));
  CHECK(c.extent_strides_offset == offsetof(TshmExtentHeader, strides));
  CHECK(c.extent_owner_uid_offset == offsetof(TshmExtentHeader, owner_uid));
  CHECK(c.extent_name_offset == offsetof(TshmExtentHeader, name));
  CHECK(c.extent_reserved_offset == offsetof(TshmExtentHeader, reserved));
  CHECK(c.segment_magic == TSHM_SEGMENT_MAGIC);
  CHECK(c.extent_magic == TSHM_EXTENT_MAGIC);
  CHECK(sizeof(TshmSegmentHeader) == TSHM_HEADER_BYTES);
  CHECK(sizeof(TshmExtentHeader) == TSHM_HEADER_BYTES);
  // The magics spell their names in memory order.
  CHECK(std::memcmp(&c.segment_magic, "TSSHTSEG", 8) == 0);
  CHECK(std::memcmp(&c.extent_magic, "TSSHTEXT", 8) == 0);
  CHECK(TSHM_MAX_NDIM == proto::kMaxDims);
  CHECK(TSHM_MAX_NAME == kMaxNameBytes);
}
