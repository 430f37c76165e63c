// Runs fn(begin, end) over [0, count) split into contiguous ranges, one per
// thread. Deterministic output is the caller's job: each index is handled by
// exactly one call, and calls write disjoint memory.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

namespace sparsellm::detail {

template <typename Fn>
void parallel_ranges(int64_t count, int threads, Fn fn) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  threads = static_cast<int>(std::min<int64_t>(threads, std::max<int64_t>(count, 1)));
  if (threads == 1) {
    fn(int64_t(0), count);
    return;
  }
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(threads);
  for (int t = 0; t < threads; ++t) {
    const int64_t begin = count * t / threads, end = count * (t + 1) / threads;
    pool.emplace_back([&, t, begin, end] {
      try {
        fn(begin, end);
      } catch (...) {
        errors[t] = std::current_exception();
      }
    });
  }
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace sparsellm::detail
