// Package compute is the seam a forward pass computes through, and the CPU
// device behind it: a multi-threaded GEMM plus the handful of elementwise /
// reduction kernels a transformer forward pass needs.
//
// Backend (backend.go) is the seam: the ops of a forward pass over Tensors
// that live on the backend, enqueued in order like a GPU stream's. *CPU
// implements it (cpu_backend.go) with the kernels below, on tensors that wrap
// host slices without a copy (HostTensor); a GPU backend (the cuda package,
// -tags cuda) implements it with device memory and kernels. compute/backendtest
// is the conformance suite every backend passes. The slice functions and
// methods (MatMulT, RMSNorm, ...) stay for code that computes on host memory
// directly.
//
// Backends (chosen at build time):
//
//   - default (cgo, no "purego" tag): float32 GEMM/GEMV via OpenBLAS, linked by
//     a small hand-written cgo file (gemm_openblas.go, `#cgo LDFLAGS: -lopenblas`).
//     OpenBLAS's own threading is forced to 1; parallelism comes from CPU's
//     worker pool, which splits the output features across threads.
//   - pure Go (CGO_ENABLED=0 or -tags purego): gonum.org/v1/gonum/blas/gonum
//     (SSE assembly dot/axpy kernels), called on tiles small enough that gonum
//     never spawns goroutines of its own.
//
// Kernels reports which one was compiled in.
//
// BF16 weights (MatMulTBF16) stay 16-bit: for decode shapes (m <= 4) a fused
// kernel widens them in registers as it streams them (bf16_kernels.c: AVX-512F
// or AVX2+FMA, chosen once per process from the CPU's features; see
// bf16Kernel and BF16KernelEnv); otherwise blocks of weight rows are widened
// into a float32 scratch buffer for the f32 GEMM. On AVX2 and AVX-512 CPUs the
// f32 GEMV (m <= 4) runs the same kernels over f32 weights instead of OpenBLAS's
// sgemv. At m = 1 they read one weight row at a time, front to back (see
// bf16_tile.h). Attention's score dot products and
// weighted sums, and SiLU, run in C vector kernels on the same instruction set
// (vec_kernels.c; the pure-Go build and other CPUs use the Go loops).
//
// Concurrency model: a *CPU owns Threads()-1 persistent worker goroutines; the
// calling goroutine always executes the first chunk of every parallel op
// itself. The methods of one *CPU must be called from one goroutine at a time
// and must not be called re-entrantly from inside a ParallelFor body (that
// panics); use the plain serial functions (MatMulTSerial, MatMul, Dot, ...)
// inside ParallelFor bodies instead. The plain functions are reentrant and
// safe for concurrent use on disjoint outputs.
package compute
