// A small pool for "run fn(i) for i in [0, n)" that stays fast on a shared machine.
//
// The calling thread always works; helpers claim tasks through an atomic counter, and the
// caller waits only for tasks that were claimed, never for a helper to show up. A helper that
// a busy neighbour keeps off its core therefore costs at most the task it holds, where an
// OpenMP barrier would wait for it to be scheduled (spin-waiting runtimes collapse here).
// Each call has its own job object, so concurrent calls from several threads are safe.
#pragma once
#include <cstdint>
#include <functional>

namespace basisrt {

// Runs fn(0..n-1) on up to `threads` threads (the caller included) and returns when all are done.
void parallel_for(int64_t n, int threads, const std::function<void(int64_t)>& fn);

}  // namespace basisrt
