// Views and copies of strided tensors: a column block of a fused projection's output seen as
// heads without a copy, 2-D copies in and out of column blocks, and views that need a copy
// refused with an error.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "marlin/tensor.h"
#include "test_util.h"

namespace marlin {
namespace {

using testing::error_message;
using testing::random_tensor;

TEST(StridedView, ColumnBlockSplitsIntoHeadsWithoutCopy) {
  // [tokens, q + k + v] with head_dim 4: k is columns [12, 20), two heads.
  const Tensor qkv = random_tensor({6, 28}, DType::f32, 1);
  const Tensor k = qkv.narrow(1, 12, 8);
  const Tensor heads = k.view({6, 2, 4});
  EXPECT_EQ(heads.strides(), Shape({28, 4, 1}));
  EXPECT_EQ(heads.data_ptr(), k.data_ptr());
  for (int64_t t = 0; t < 6; ++t)
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t d = 0; d < 4; ++d)
        EXPECT_EQ(heads.item_as_double({t, h, d}), qkv.item_as_double({t, 12 + 4 * h + d}));
  // -1 is inferred the same way; size-1 dims go anywhere.
  EXPECT_EQ(k.view({6, -1, 4}).shape(), Shape({6, 2, 4}));
  EXPECT_EQ(k.view({1, 6, 2, 1, 4}).strides()[4], 1);
}

TEST(StridedView, MergesBatchAndTokensOfAColumnBlock) {
  // [B, T, N] output of a fused GEMM, column block [B, T, 8] viewed as [B * T, 2, 4] and back.
  const Tensor y = random_tensor({2, 3, 20}, DType::bf16, 2);
  const Tensor v = y.narrow(2, 4, 8);
  const Tensor rows = v.view({6, 2, 4});
  EXPECT_EQ(rows.strides(), Shape({20, 4, 1}));
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t < 3; ++t)
      for (int64_t j = 0; j < 8; ++j)
        EXPECT_EQ(rows.item_as_double({b * 3 + t, j / 4, j % 4}), y.item_as_double({b, t, 4 + j}));
  const Tensor back = rows.view({2, 3, 2, 4});
  EXPECT_EQ(back.strides(), Shape({60, 20, 4, 1}));
  EXPECT_EQ(back.item_as_double({1, 2, 1, 3}), y.item_as_double({1, 2, 11}));
}

TEST(StridedView, ViewsThatNeedACopyAreErrors) {
  const Tensor t = random_tensor({4, 6}, DType::f32, 3);
  // Merging across the gap between column blocks would need a copy.
  std::string msg = error_message([&] { t.narrow(1, 0, 3).view({12}); });
  EXPECT_NE(msg.find("[Tensor::view]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("without a copy"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[12]"), std::string::npos) << msg;
  // A transpose cannot be flattened either.
  EXPECT_NE(error_message([&] { t.transpose(0, 1).view({24}); }).find("without a copy"), std::string::npos);
  // The element count still has to match.
  EXPECT_NE(error_message([&] { t.narrow(1, 0, 3).view({5, 2}); }).find("cannot view"), std::string::npos);
  // contiguous() first is always possible.
  EXPECT_EQ(t.narrow(1, 0, 3).contiguous().view({12}).shape(), Shape({12}));
}

TEST(StridedCopy, ContiguousOfAColumnBlockGathersItsRows) {
  const Tensor t = random_tensor({5, 19}, DType::f16, 4);
  const Tensor c = t.narrow(1, 3, 7).contiguous();
  ASSERT_TRUE(c.is_contiguous());
  for (int64_t i = 0; i < 5; ++i)
    for (int64_t j = 0; j < 7; ++j) EXPECT_EQ(c.item_as_double({i, j}), t.item_as_double({i, 3 + j}));
}

TEST(StridedCopy, CopyIntoAColumnBlockLeavesTheOtherColumns) {
  testing::PoisonScope poison;
  Tensor dst = random_tensor({5, 20}, DType::f32, 5);
  const Tensor before = dst.clone();
  const Tensor src = random_tensor({5, 6}, DType::f32, 6);
  dst.narrow(1, 7, 6).copy_from(src);
  for (int64_t i = 0; i < 5; ++i)
    for (int64_t j = 0; j < 20; ++j) {
      const double want = j >= 7 && j < 13 ? src.item_as_double({i, j - 7}) : before.item_as_double({i, j});
      EXPECT_EQ(dst.item_as_double({i, j}), want) << i << "," << j;
    }
  // A strided source is gathered first; a 1-D slice is contiguous already.
  Tensor row = random_tensor({30}, DType::f32, 7);
  row.narrow(0, 10, 6).copy_from(src.select(0, 2));
  EXPECT_EQ(row.item_as_double({12}), src.item_as_double({2, 2}));
  // Blocks of heads: [T, 4 heads, 3] with heads 1..2 written.
  Tensor heads = random_tensor({4, 4, 3}, DType::f32, 8);
  const Tensor two = random_tensor({4, 2, 3}, DType::f32, 9);
  heads.narrow(1, 1, 2).copy_from(two);
  EXPECT_EQ(heads.item_as_double({3, 2, 1}), two.item_as_double({3, 1, 1}));
}

TEST(StridedCopy, DestinationsThatAreNotRowRunsAreErrors) {
  Tensor t = random_tensor({4, 6}, DType::f32, 10);
  const Tensor src = random_tensor({6, 4}, DType::f32, 11);
  const std::string msg = error_message([&] { t.transpose(0, 1).copy_from(src); });
  EXPECT_NE(msg.find("[Tensor::copy_from]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("contiguous runs"), std::string::npos) << msg;
}

}  // namespace
}  // namespace marlin
