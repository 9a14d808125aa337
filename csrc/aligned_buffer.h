// A 64-byte aligned float buffer (as PyTorch's tensors) that only grows, until released: the
// program's per-thread arena and the expand + depthwise op's row scratch.
#pragma once
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>

namespace basisrt {

struct Aligned {
    std::unique_ptr<float, decltype(&std::free)> p{nullptr, &std::free};
    size_t size = 0;

    float* get(size_t need) {
        if (size < need) {
            p.reset();  // the old block first: a growing buffer never holds two
            size = 0;
            void* q = std::aligned_alloc(64, (need * sizeof(float) + 63) / 64 * 64);
            if (!q) throw std::bad_alloc();
            p.reset(static_cast<float*>(q));
            size = need;
        }
        return p.get();
    }
};

}  // namespace basisrt
