// A fully populated object descriptor, shared by the protocol tests (which
// check each field after a round trip) and the fuzzer's seed corpus.
#pragma once

#include <memory>

#include "tensorshm/protocol.hpp"

namespace tshm_test {

inline std::unique_ptr<tensorshm::wire::ObjectDescT> sample_desc() {
  namespace wire = tensorshm::wire;
  auto d = std::make_unique<wire::ObjectDescT>();
  d->object_id = 77;
  d->name = "camera/0/frame";
  d->version = 12;
  d->dtype = std::make_unique<wire::DType>(tensorshm::protocol::to_wire(tensorshm::dtypes::kBfloat16));
  d->shape = {2, 3, 4};
  d->strides = {12, 4, 1};
  d->nbytes = 48;
  d->segment_id = 3;
  d->extent_offset = 8192;
  d->data_offset = 12288;
  d->generation = 99;
  d->owner_uid = 1000;
  d->share = wire::Share::Group;
  d->sealed = true;
  d->created_unix_ns = 1700000000123456789ull;
  d->leases = 5;
  return d;
}

}  // namespace tshm_test
