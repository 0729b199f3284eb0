// Internal: the public MoeRouting as the kernels' plain-data routing parameters.
#pragma once

#include "kernels/moe_routing_common.h"
#include "marlin/moe_routing.h"

namespace marlin::ops {

moe::RouteParams route_params(const MoeRouting& routing, bool has_bias);
// Checks a routing's sizes (experts, top_k, groups); errors name `op`.
void check_routing(const char* op, const MoeRouting& routing);

}  // namespace marlin::ops
