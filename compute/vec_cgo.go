//go:build cgo && !purego

package compute

/*
#cgo LDFLAGS: -lm
#include "vec_kernels.h"
*/
import "C"

import "unsafe"

// The attention and SiLU vector kernels (vec_kernels.c) run on the instruction set of the bf16
// kernel in use (bf16Active: AVX-512F, AVX2 + FMA, or none), one choice from the CPU's features
// for all of the package's C kernels; with bf16Go they report false and the caller runs its Go loop.

// dotsSIMD sets out[j] = scale·Σ_l q[l]·k[j·ks+l] for j < len(out), l < len(q).
func dotsSIMD(out, q, k []float32, ks int, scale float32) bool {
	n, hd := len(out), len(q)
	if n == 0 {
		return true
	}
	_ = k[(n-1)*ks+hd-1]
	switch bf16Active() {
	case bf16AVX512:
		C.pregate_dots_avx512(fptr(q), fptr(k), C.size_t(ks), C.int(n), C.int(hd), C.float(scale), fptr(out))
	case bf16AVX2:
		C.pregate_dots_avx2(fptr(q), fptr(k), C.size_t(ks), C.int(n), C.int(hd), C.float(scale), fptr(out))
	default:
		return false
	}
	return true
}

// wsumSIMD sets out[l] += Σ_j p[j]·v[j·vs+l] for j < len(p), l < len(out).
func wsumSIMD(out, p, v []float32, vs int) bool {
	n, hd := len(p), len(out)
	if n == 0 {
		return true
	}
	_ = v[(n-1)*vs+hd-1]
	switch bf16Active() {
	case bf16AVX512:
		C.pregate_wsum_avx512(fptr(p), fptr(v), C.size_t(vs), C.int(n), C.int(hd), fptr(out))
	case bf16AVX2:
		C.pregate_wsum_avx2(fptr(p), fptr(v), C.size_t(vs), C.int(n), C.int(hd), fptr(out))
	default:
		return false
	}
	return true
}

// siluSIMD is SiLU's vector loop (vec_kernels.c: within 3 u = 3·2^-24 relative; the Go loop 1.2 u).
func siluSIMD(x []float32) bool {
	if len(x) < siluSIMDMin {
		return false
	}
	p := (*C.float)(unsafe.Pointer(unsafe.SliceData(x)))
	switch bf16Active() {
	case bf16AVX512:
		C.pregate_silu_avx512(p, C.size_t(len(x)))
	case bf16AVX2:
		C.pregate_silu_avx2(p, C.size_t(len(x)))
	default:
		return false
	}
	return true
}
