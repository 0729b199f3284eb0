#include <gtest/gtest.h>
namespace marlin::io { int io_layer_version(); }
TEST(IoLayer, Links) { EXPECT_EQ(marlin::io::io_layer_version(), 1); }
