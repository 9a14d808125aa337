#include "thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace basisrt {
namespace {

struct Job {
    const std::function<void(int64_t)>* fn;
    int64_t n;
    std::atomic<int64_t> next{0}, done{0};
    // The first exception a task threw (an allocation failing, say): the caller rethrows it once
    // every claimed task is done. An exception escaping a helper thread would end the process.
    std::atomic<bool> failed{false};
    std::exception_ptr error;

    // Claim and run tasks until none are left. A helper that picks the job up after the
    // caller returned finds next >= n and never touches fn (which lived on the caller's stack).
    void work() {
        for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) {
            if (!failed.load(std::memory_order_relaxed)) {
                try {
                    (*fn)(i);
                } catch (...) {
                    if (!failed.exchange(true)) error = std::current_exception();
                }
            }
            done.fetch_add(1, std::memory_order_release);
        }
    }
};

class Pool {
  public:
    static Pool& get() {
        static Pool* pool = new Pool();  // never destroyed: helpers may outlive static teardown
        return *pool;
    }

    void run(int64_t n, int threads, const std::function<void(int64_t)>& fn) {
        auto job = std::make_shared<Job>();
        job->fn = &fn;
        job->n = n;
        const int helpers = static_cast<int>(std::min<int64_t>(threads - 1, n - 1));
        if (helpers > 0) {
            ensure_workers(helpers);
            {
                std::lock_guard<std::mutex> lk(mu_);
                for (int h = 0; h < helpers; ++h) queue_.push_back(job);
                queued_.fetch_add(helpers, std::memory_order_release);
            }
            if (helpers == 1) cv_.notify_one(); else cv_.notify_all();
        }
        job->work();
        // Wait only for claimed tasks still running elsewhere: spin briefly, then yield the core.
        for (int spin = 0; job->done.load(std::memory_order_acquire) < n; ++spin)
            if (spin > 2000) std::this_thread::yield();
        if (job->failed.load(std::memory_order_acquire)) std::rethrow_exception(job->error);
    }

  private:
    void ensure_workers(int count) {
        std::lock_guard<std::mutex> lk(mu_);
        while (static_cast<int>(workers_.size()) < count) workers_.emplace_back([this] { loop(); }).detach();
    }

    void loop() {
        for (;;) {
            poll();
            std::shared_ptr<Job> job;
            {
                std::unique_lock<std::mutex> lk(mu_);
                cv_.wait(lk, [this] { return !queue_.empty(); });
                job = std::move(queue_.front());
                queue_.pop_front();
                queued_.fetch_sub(1, std::memory_order_relaxed);
            }
            job->work();
        }
    }

    // Watch for a job briefly before sleeping on the condition variable: back-to-back layers
    // arrive microseconds apart, and a wake-up through the kernel costs more than a small layer.
    // Spinning on an atomic picks a job up within ~0.1 µs, where polling the mutex with
    // sched_yield took 1-2 µs per layer. Then yield, so a busy neighbour gets the core back.
    void poll() const {
        const auto start = std::chrono::steady_clock::now();
        for (int64_t i = 0; queued_.load(std::memory_order_acquire) == 0; ++i) {
            if (i % 64 == 0) {
                const auto waited = std::chrono::steady_clock::now() - start;
                if (waited > kPoll) return;
                if (waited > kSpin) std::this_thread::yield();
            }
            cpu_relax();
        }
    }

    static void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }

    static constexpr std::chrono::microseconds kSpin{50}, kPoll{200};

    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::shared_ptr<Job>> queue_;
    std::atomic<int64_t> queued_{0};  // queue_.size(), readable without the lock
    std::vector<std::thread> workers_;  // detached; the vector only counts them
};

}  // namespace

void parallel_for(int64_t n, int threads, const std::function<void(int64_t)>& fn) {
    if (n <= 0) return;
    // More threads than cores only queue behind each other (and each helper is an OS thread that
    // lives for the process): the pool never grows past the machine's hardware threads.
    static const int cores = std::max(1u, std::thread::hardware_concurrency());
    threads = std::min(threads, cores);
    if (threads <= 1 || n == 1) {
        for (int64_t i = 0; i < n; ++i) fn(i);
        return;
    }
    Pool::get().run(n, threads, fn);
}

}  // namespace basisrt
