// Benchmark timing helpers (marlin/timing.h) on the CPU: the median, timed runs, and graph
// timing's refusal of a device without CUDA graphs.
#include <gtest/gtest.h>

#include <cmath>

#include "marlin/error.h"
#include "marlin/timing.h"
#include "test_util.h"

namespace marlin {
namespace {

TEST(Timing, MedianOfOddAndEvenCountsAndOfNothing) {
  EXPECT_EQ(median({3.0, 1.0, 2.0}), 2.0);
  EXPECT_EQ(median({4.0, 1.0, 3.0, 2.0}), 2.5);
  EXPECT_EQ(median({}), 0.0);
}

TEST(Timing, CpuRunsAreTimedOneByOneAfterTheWarmup) {
  int calls = 0;
  const std::vector<double> times = time_runs(Device::cpu(), 2, 5, [&] { ++calls; });
  EXPECT_EQ(calls, 7);
  ASSERT_EQ(times.size(), 5u);
  for (double t : times) EXPECT_TRUE(std::isfinite(t) && t >= 0.0);
}

TEST(Timing, GraphTimingNeedsACudaDevice) {
  int calls = 0;
  const std::string message = testing::error_message([&] { time_graph(Device::cpu(), 4, 3, [&](int) { ++calls; }); });
  EXPECT_NE(message.find("time_graph"), std::string::npos) << message;
  EXPECT_NE(message.find("CUDA device"), std::string::npos) << message;
  EXPECT_EQ(calls, 0);
}

}  // namespace
}  // namespace marlin
