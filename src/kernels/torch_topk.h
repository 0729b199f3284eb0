// torch.topk's CPU selection, reproduced step for step so that ties are broken exactly as in
// Transformers' routers (and identically on the CPU and in CUDA kernels). PyTorch's CPU topk
// (aten/src/ATen/native/cpu/SortingKernel.cpp, topk_impl_loop) fills (value, index) pairs in
// index order, then runs std::partial_sort when k * 64 <= n, else std::nth_element at k - 1
// followed by std::sort of the first k - 1 pairs, with the comparator "NaN first, then larger".
// Which of equal values wins is therefore decided by libstdc++'s introselect, heap select and
// introsort; below are those algorithms (bits/stl_algo.h, bits/stl_heap.h) transcribed over a
// plain array. Only comparison outcomes decide element moves, so the transcription selects
// exactly what the library does.
#pragma once

#include <cstdint>

#include "marlin/dtype.h"

namespace marlin::topk {

struct Entry {
  float value;
  int32_t index;
};

// x before y: NaN first (numpy's order), then the larger value.
MARLIN_HD bool before(const Entry& x, const Entry& y) {
  const bool xn = x.value != x.value, yn = y.value != y.value;
  return (xn && !yn) || (x.value > y.value);
}

MARLIN_HD void swap_entries(Entry* a, Entry* b) {
  const Entry t = *a;
  *a = *b;
  *b = t;
}

MARLIN_HD int floor_log2(int n) {
  int r = 0;
  while (n > 1) {
    n >>= 1;
    ++r;
  }
  return r;
}

// ---- bits/stl_heap.h ---------------------------------------------------------------------------

MARLIN_HD void push_heap(Entry* first, int hole, int top, Entry value) {
  int parent = (hole - 1) / 2;
  while (hole > top && before(first[parent], value)) {
    first[hole] = first[parent];
    hole = parent;
    parent = (hole - 1) / 2;
  }
  first[hole] = value;
}

MARLIN_HD void adjust_heap(Entry* first, int hole, int len, Entry value) {
  const int top = hole;
  int child = hole;
  while (child < (len - 1) / 2) {
    child = 2 * (child + 1);
    if (before(first[child], first[child - 1])) child--;
    first[hole] = first[child];
    hole = child;
  }
  if ((len & 1) == 0 && child == (len - 2) / 2) {
    child = 2 * (child + 1);
    first[hole] = first[child - 1];
    hole = child - 1;
  }
  push_heap(first, hole, top, value);
}

MARLIN_HD void pop_heap(Entry* first, Entry* last, Entry* result) {
  const Entry value = *result;
  *result = *first;
  adjust_heap(first, 0, static_cast<int>(last - first), value);
}

MARLIN_HD void make_heap(Entry* first, Entry* last) {
  const int len = static_cast<int>(last - first);
  if (len < 2) return;
  for (int parent = (len - 2) / 2;; --parent) {
    adjust_heap(first, parent, len, first[parent]);
    if (parent == 0) return;
  }
}

MARLIN_HD void sort_heap(Entry* first, Entry* last) {
  while (last - first > 1) {
    --last;
    pop_heap(first, last, last);
  }
}

// ---- bits/stl_algo.h ---------------------------------------------------------------------------

MARLIN_HD void heap_select(Entry* first, Entry* middle, Entry* last) {
  make_heap(first, middle);
  for (Entry* i = middle; i < last; ++i)
    if (before(*i, *first)) pop_heap(first, middle, i);
}

MARLIN_HD void move_median_to_first(Entry* result, Entry* a, Entry* b, Entry* c) {
  if (before(*a, *b)) {
    if (before(*b, *c)) swap_entries(result, b);
    else if (before(*a, *c)) swap_entries(result, c);
    else swap_entries(result, a);
  } else if (before(*a, *c)) {
    swap_entries(result, a);
  } else if (before(*b, *c)) {
    swap_entries(result, c);
  } else {
    swap_entries(result, b);
  }
}

MARLIN_HD Entry* unguarded_partition(Entry* first, Entry* last, Entry* pivot) {
  while (true) {
    while (before(*first, *pivot)) ++first;
    --last;
    while (before(*pivot, *last)) --last;
    if (!(first < last)) return first;
    swap_entries(first, last);
    ++first;
  }
}

MARLIN_HD Entry* unguarded_partition_pivot(Entry* first, Entry* last) {
  Entry* mid = first + (last - first) / 2;
  move_median_to_first(first, first + 1, mid, last - 1);
  return unguarded_partition(first + 1, last, first);
}

MARLIN_HD void unguarded_linear_insert(Entry* last) {
  const Entry val = *last;
  Entry* next = last - 1;
  while (before(val, *next)) {
    *last = *next;
    last = next;
    --next;
  }
  *last = val;
}

MARLIN_HD void insertion_sort(Entry* first, Entry* last) {
  if (first == last) return;
  for (Entry* i = first + 1; i != last; ++i) {
    if (before(*i, *first)) {
      const Entry val = *i;
      for (Entry* p = i; p != first; --p) *p = *(p - 1);  // move_backward
      *first = val;
    } else {
      unguarded_linear_insert(i);
    }
  }
}

constexpr int kSortThreshold = 16;

MARLIN_HD void final_insertion_sort(Entry* first, Entry* last) {
  if (last - first > kSortThreshold) {
    insertion_sort(first, first + kSortThreshold);
    for (Entry* i = first + kSortThreshold; i != last; ++i) unguarded_linear_insert(i);
  } else {
    insertion_sort(first, last);
  }
}

// std::sort: introsort. The recursion on the right part becomes an explicit stack (depth is
// bounded by 2 log2 n, at most 64 frames for any int n).
MARLIN_HD void introsort_loop(Entry* first, Entry* last, int depth_limit) {
  struct Frame {
    Entry* first;
    Entry* last;
    int depth;
  };
  Frame stack[64];
  int top = 0;
  stack[top++] = {first, last, depth_limit};
  while (top > 0) {
    Frame f = stack[--top];
    while (f.last - f.first > kSortThreshold) {
      if (f.depth == 0) {
        heap_select(f.first, f.last, f.last);
        sort_heap(f.first, f.last);
        break;
      }
      --f.depth;
      Entry* cut = unguarded_partition_pivot(f.first, f.last);
      // libstdc++ recurses into [cut, last) first, then loops on [first, cut): the order of
      // the two parts does not change the result (they are disjoint), only the stack use.
      stack[top++] = {cut, f.last, f.depth};
      f.last = cut;
    }
  }
}

MARLIN_HD void sort(Entry* first, Entry* last) {
  if (first == last) return;
  introsort_loop(first, last, floor_log2(static_cast<int>(last - first)) * 2);
  final_insertion_sort(first, last);
}

MARLIN_HD void nth_element(Entry* first, Entry* nth, Entry* last) {
  if (first == last || nth == last) return;
  int depth_limit = floor_log2(static_cast<int>(last - first)) * 2;
  while (last - first > 3) {
    if (depth_limit == 0) {
      heap_select(first, nth + 1, last);
      swap_entries(first, nth);  // the nth element in its final place
      return;
    }
    --depth_limit;
    Entry* cut = unguarded_partition_pivot(first, last);
    if (cut <= nth) first = cut;
    else last = cut;
  }
  insertion_sort(first, last);
}

MARLIN_HD void partial_sort(Entry* first, Entry* middle, Entry* last) {
  heap_select(first, middle, last);
  sort_heap(first, middle);
}

// torch.topk(values[0..n), k, largest=True): queue[0..n) is scratch; writes the k chosen
// indices in torch's order (sorted: descending; the set does not depend on `sorted`).
MARLIN_HD void select(const float* values, int n, int k, Entry* queue, int32_t* out_index,
                      float* out_value = nullptr) {
  if (k <= 0) return;
  for (int j = 0; j < n; ++j) queue[j] = {values[j], j};
  if (static_cast<int64_t>(k) * 64 <= n) {
    partial_sort(queue, queue + k, queue + n);
  } else {
    nth_element(queue, queue + k - 1, queue + n);
    sort(queue, queue + k - 1);
  }
  for (int j = 0; j < k; ++j) {
    out_index[j] = queue[j].index;
    if (out_value) out_value[j] = queue[j].value;
  }
}

}  // namespace marlin::topk
