//go:build cuda

package cuda

import (
	"fmt"
	"testing"

	"github.com/pregate/pregate/compute"
)

// The GPU benchmarks behind scripts/gpu-check.sh's table: the device's measured memory bandwidth
// (a device-to-device copy), the decode GEMV of experts' weights against it, and pinned
// host-to-device copies. Each reports GB/s, timed with CUDA events around b.N repetitions on the
// stream (the host's loop and the launches are not in the figure unless they starve the GPU).
//
//	cuda.test -test.run '^$' -test.bench . -test.benchtime 200x

// timed runs enqueue b.N times on stream s between two timing events and reports bytes per
// repetition as GB/s.
func timed(b *testing.B, d *Device, s stream, bytes int64, enqueue func() error) {
	b.Helper()
	start, err := d.ctx.newEvent(true)
	if err != nil {
		b.Fatal(err)
	}
	defer d.ctx.destroyEvent(start)
	end, err := d.ctx.newEvent(true)
	if err != nil {
		b.Fatal(err)
	}
	defer d.ctx.destroyEvent(end)
	// One untimed repetition: the first launch of a kernel loads it.
	if err := enqueue(); err != nil {
		b.Fatal(err)
	}
	if err := d.ctx.syncStream(s); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	if err := d.ctx.record(start, s); err != nil {
		b.Fatal(err)
	}
	for range b.N {
		if err := enqueue(); err != nil {
			b.Fatal(err)
		}
	}
	if err := d.ctx.record(end, s); err != nil {
		b.Fatal(err)
	}
	if err := d.ctx.syncEvent(end); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	ms, err := d.ctx.elapsed(start, end)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(bytes)*float64(b.N)/(float64(ms)*1e-3)/1e9, "GB/s")
	b.ReportMetric(float64(ms)*1e3/float64(b.N), "us/op")
}

// BenchmarkDeviceCopy is the device's memory bandwidth as a copy sees it: 1 GiB read and written.
func BenchmarkDeviceCopy(b *testing.B) {
	d := device(b)
	const n = 1 << 30
	src, err := d.ctx.memAlloc(n)
	if err != nil {
		b.Fatal(err)
	}
	defer d.ctx.memFree(src)
	dst, err := d.ctx.memAlloc(n)
	if err != nil {
		b.Fatal(err)
	}
	defer d.ctx.memFree(dst)
	info := d.Info()
	b.Logf("%s: sm_%d, %d SMs, %.0f GB, theoretical bandwidth %.0f GB/s, driver %d",
		info.Name, info.ComputeCapability, info.SMs, float64(info.Memory)/1e9, info.PeakBandwidth/1e9, info.Driver)
	timed(b, d, d.compute, 2*n, func() error { return d.ctx.copyDtoD(dst, src, n, d.compute) })
}

// expertShapes are the expert weights of the paper's models, one GEMV each at decode (m = 1):
// Switch-Base-8 (float32, d_model 768, d_ff 3072) and Mixtral 8x7B (bfloat16, 4096, 14336).
var expertShapes = []struct {
	name string
	dt   compute.DType
	n, k int
}{
	{"switch-base-wi-f32", compute.F32, 3072, 768},
	{"switch-base-wo-f32", compute.F32, 768, 3072},
	{"mixtral-w1-bf16", compute.BF16, 14336, 4096},
	{"mixtral-w2-bf16", compute.BF16, 4096, 14336},
}

// BenchmarkExpertGEMV is the decode Linear (m = 1, then m = 4) over an expert's weight: bytes are
// the weight's (the activations are a rounding error), so GB/s compares with BenchmarkDeviceCopy.
func BenchmarkExpertGEMV(b *testing.B) {
	d := device(b)
	be := d.backend
	for _, s := range expertShapes {
		for _, m := range []int{1, 4} {
			b.Run(fmt.Sprintf("%s/m=%d", s.name, m), func(b *testing.B) {
				w, err := be.Alloc(s.dt, s.n*s.k)
				if err != nil {
					b.Fatal(err)
				}
				defer be.Free(w)
				x, err := be.Alloc(compute.F32, m*s.k)
				if err != nil {
					b.Fatal(err)
				}
				defer be.Free(x)
				y, err := be.Alloc(compute.F32, m*s.n)
				if err != nil {
					b.Fatal(err)
				}
				defer be.Free(y)
				timed(b, d, be.s, w.Bytes(), func() error {
					be.Linear(y, x, m, s.k, w, s.n, false)
					return be.err
				})
			})
		}
	}
}

// BenchmarkPinnedH2D is a host-to-device copy from pinned memory on the copy stream, as an expert's
// upload: 64 MiB (a Mixtral expert is 352 MB in bf16; a Switch-Base expert 19 MB in f32).
func BenchmarkPinnedH2D(b *testing.B) {
	d := device(b)
	const n = 64 << 20
	h, err := d.AllocHost(n)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Free()
	buf, err := d.Alloc(n)
	if err != nil {
		b.Fatal(err)
	}
	defer buf.Free()
	timed(b, d, d.copies, n, func() error { return d.ctx.copyHtoD(buf.ptr, h.p, n, d.copies) })
}
