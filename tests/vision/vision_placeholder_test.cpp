#include <gtest/gtest.h>
#include "marlin/tensor.h"
TEST(VisionLayer, Links) { EXPECT_EQ(marlin::Tensor::empty({1, 3}, marlin::DType::u8).numel(), 3); }
