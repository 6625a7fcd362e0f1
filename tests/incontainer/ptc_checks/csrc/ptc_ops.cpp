// ptc::scaled_add(a, b, alpha) = a + alpha * b
//
// A minimal out-of-tree TorchScript operator. The dev image compiles it into
// libptc_ops.so; the prod image (no compiler) loads that library with
// torch.ops.load_library before loading a scripted model that calls it.
// Written with ATen ops, so it runs on any device and supports autograd
// (registered as a CompositeImplicitAutograd kernel).
#include <ATen/ATen.h>
#include <torch/library.h>

namespace {

at::Tensor scaled_add(const at::Tensor& a, const at::Tensor& b, double alpha) {
  TORCH_CHECK(a.sizes() == b.sizes(), "ptc::scaled_add: shape mismatch ", a.sizes(), " vs ", b.sizes());
  return at::add(a, b, alpha);
}

}  // namespace

TORCH_LIBRARY(ptc, m) {
  m.def("scaled_add(Tensor a, Tensor b, float alpha) -> Tensor", &scaled_add);
}
