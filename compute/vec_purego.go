//go:build !cgo || purego

package compute

// The pure-Go build has no vector kernels (they are C, see vec_kernels.c): callers run their Go loops.

func dotsSIMD(out, q, k []float32, ks int, scale float32) bool { return false }

func wsumSIMD(out, p, v []float32, vs int) bool { return false }

func siluSIMD(x []float32) bool { return false }
