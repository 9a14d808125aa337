#include "thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
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

    // Claim and run tasks until none are left. A helper that picks the job up after the
    // caller returned finds next >= n and never touches fn (which lived on the caller's stack).
    void work() {
        for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) {
            (*fn)(i);
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
            }
            if (helpers == 1) cv_.notify_one(); else cv_.notify_all();
        }
        job->work();
        // Wait only for claimed tasks still running elsewhere: spin briefly, then yield the core.
        for (int spin = 0; job->done.load(std::memory_order_acquire) < n; ++spin)
            if (spin > 2000) std::this_thread::yield();
    }

  private:
    void ensure_workers(int count) {
        std::lock_guard<std::mutex> lk(mu_);
        while (static_cast<int>(workers_.size()) < count) workers_.emplace_back([this] { loop(); }).detach();
    }

    void loop() {
        for (;;) {
            std::shared_ptr<Job> job;
            {
                std::unique_lock<std::mutex> lk(mu_);
                // Poll briefly before sleeping: back-to-back layers arrive microseconds apart.
                auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
                while (queue_.empty() && std::chrono::steady_clock::now() < until) {
                    lk.unlock();
                    std::this_thread::yield();
                    lk.lock();
                }
                cv_.wait(lk, [this] { return !queue_.empty(); });
                job = std::move(queue_.front());
                queue_.pop_front();
            }
            job->work();
        }
    }

    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::shared_ptr<Job>> queue_;
    std::vector<std::thread> workers_;  // detached; the vector only counts them
};

}  // namespace

void parallel_for(int64_t n, int threads, const std::function<void(int64_t)>& fn) {
    if (n <= 0) return;
    if (threads <= 1 || n == 1) {
        for (int64_t i = 0; i < n; ++i) fn(i);
        return;
    }
    Pool::get().run(n, threads, fn);
}

}  // namespace basisrt
