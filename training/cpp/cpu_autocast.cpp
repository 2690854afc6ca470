// CPU autocast (bfloat16) for hashsrv-train. libtorch has it, but tch exposes only the CUDA
// switch, so these two functions are the whole bridge. Autocast state is per thread.
#include <ATen/autocast_mode.h>

extern "C" {

// Turns bfloat16 autocast for CPU tensors on or off on this thread; returns false if libtorch
// threw (nothing is changed then).
bool hashsrv_cpu_autocast(bool enabled) {
  try {
    at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCPU, enabled);
    return true;
  } catch (...) {
    return false;
  }
}

// Drops the cached low-precision copies of the weights; they are stale once the optimiser steps.
void hashsrv_autocast_clear_cache() { at::autocast::clear_cache(); }

}
