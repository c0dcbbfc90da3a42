//go:build cuda

package cuda

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/compute/backendtest"
	"github.com/pregate/pregate/expertstore/blob"
)

// The tests that need a GPU share one device, opened by TestMain. Without one (no driver, no
// device) they skip, and TestMain prints one line saying why; with PREGATE_CUDA_REQUIRE set (the
// GPU check machine sets it) a missing GPU fails the run instead. The tests of the host-side logic
// (the arena, launch parameters, blob offsets, Open's errors) run everywhere.

var (
	testDev    *Device
	testDevErr error
)

// testArena is the expert arena the tests reserve.
const testArena = 1 << 30

func TestMain(m *testing.M) {
	testDev, testDevErr = Open(0)
	if testDevErr == nil {
		if err := testDev.ReserveArena(testArena); err != nil {
			fmt.Fprintf(os.Stderr, "cuda tests: %v\n", err)
			os.Exit(1)
		}
	} else {
		fmt.Fprintf(os.Stderr, "cuda tests: no GPU, the device tests skip: %v\n", testDevErr)
		if os.Getenv("PREGATE_CUDA_REQUIRE") != "" {
			fmt.Fprintln(os.Stderr, "cuda tests: PREGATE_CUDA_REQUIRE is set: failing")
			os.Exit(1)
		}
	}
	code := m.Run()
	if testDev != nil {
		if err := testDev.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "cuda tests: Close: %v\n", err)
			code = 1
		}
	}
	// Close stops the device's event waiter; nothing else of the package's may outlive it.
	if err := goleak.Find(); err != nil && code == 0 {
		fmt.Fprintf(os.Stderr, "cuda tests: %v\n", err)
		code = 1
	}
	os.Exit(code)
}

func device(t testing.TB) *Device {
	t.Helper()
	if testDev == nil {
		t.Skipf("no GPU: %v", testDevErr)
	}
	return testDev
}

// TestOpenErrors: an ordinal the host does not have is a clear error wrapping ErrNoDevice (or, on a
// host without a driver, ErrNoDriver naming libcuda.so.1), never a panic.
func TestOpenErrors(t *testing.T) {
	for _, ordinal := range []int{-1, 1 << 20} {
		d, err := Open(ordinal)
		if err == nil {
			d.Close()
			t.Fatalf("Open(%d) succeeded", ordinal)
		}
		switch {
		case errors.Is(err, ErrNoDevice):
			if want := fmt.Sprintf("cuda: device %d not found (", ordinal); !strings.HasPrefix(err.Error(), want) {
				t.Errorf("Open(%d): %q, want it to start with %q", ordinal, err, want)
			}
		case errors.Is(err, ErrNoDriver):
			if testDev != nil {
				t.Errorf("Open(%d): %v, but device 0 opened", ordinal, err)
			}
			if !strings.HasPrefix(err.Error(), "cuda: no CUDA driver (libcuda.so.1): ") {
				t.Errorf("Open(%d): %q", ordinal, err)
			}
		default:
			t.Errorf("Open(%d): %v wraps neither ErrNoDevice nor ErrNoDriver", ordinal, err)
		}
	}
}

func TestArena(t *testing.T) {
	a := newArena(0x10000, 10*arenaAlign)
	alloc := func(n int64) int64 {
		t.Helper()
		off, err := a.alloc(n)
		if err != nil {
			t.Fatalf("alloc(%d): %v", n, err)
		}
		if off%arenaAlign != 0 {
			t.Fatalf("alloc(%d) = %d, not %d-aligned", n, off, arenaAlign)
		}
		return off
	}
	x := alloc(1)              // [0, 1)
	y := alloc(3 * arenaAlign) // [1, 4)
	z := alloc(2 * arenaAlign) // [4, 6)
	w := alloc(4 * arenaAlign) // [6, 10)
	if got := a.inUse(); got != 10*arenaAlign {
		t.Fatalf("in use %d, want all", got)
	}
	if _, err := a.alloc(1); !errors.Is(err, ErrOutOfMemory) {
		t.Fatalf("alloc of a full arena: %v, want ErrOutOfMemory", err)
	}
	// Free y (3 units) and w (4 units): best fit gives a 2-unit request the smaller range, y's.
	a.release(y, 3*arenaAlign)
	a.release(w, 4*arenaAlign)
	if off := alloc(2 * arenaAlign); off != y {
		t.Fatalf("best fit took %d, want %d (the 3-unit range)", off, y)
	}
	// Freeing everything coalesces back to one range: a 10-unit alloc fits.
	a.release(y, 2*arenaAlign)
	a.release(x, 1)
	a.release(z, 2*arenaAlign)
	if len(a.free) != 1 || a.free[0] != (span{0, 10 * arenaAlign}) || a.inUse() != 0 {
		t.Fatalf("after freeing everything: free %v, in use %d", a.free, a.inUse())
	}
	if off := alloc(10 * arenaAlign); off != 0 {
		t.Fatalf("whole-arena alloc at %d", off)
	}
	if _, err := a.alloc(0); err == nil {
		t.Fatal("alloc(0) succeeded")
	}
}

// TestArenaRandom frees and allocates at random and checks that the free list stays sorted,
// coalesced and disjoint from what is allocated.
func TestArenaRandom(t *testing.T) {
	const units = 64
	a := newArena(0, units*arenaAlign)
	rng := rand.New(rand.NewPCG(1, 2))
	type block struct{ off, n int64 }
	var held []block
	for range 5000 {
		if len(held) > 0 && rng.IntN(2) == 0 {
			i := rng.IntN(len(held))
			a.release(held[i].off, held[i].n)
			held = append(held[:i], held[i+1:]...)
		} else {
			n := int64(1 + rng.IntN(8*arenaAlign))
			off, err := a.alloc(n)
			if err == nil {
				held = append(held, block{off, n})
			} else if !errors.Is(err, ErrOutOfMemory) {
				t.Fatal(err)
			}
		}
		used := make([]bool, units)
		var sum int64
		for _, b := range held {
			for u := b.off / arenaAlign; u < (b.off+alignUp(b.n))/arenaAlign; u++ {
				if used[u] {
					t.Fatalf("unit %d handed out twice", u)
				}
				used[u] = true
			}
			sum += alignUp(b.n)
		}
		for i, s := range a.free {
			if i > 0 && a.free[i-1].off+a.free[i-1].n >= s.off {
				t.Fatalf("free list %v is not sorted and coalesced", a.free)
			}
			for u := s.off / arenaAlign; u < (s.off+s.n)/arenaAlign; u++ {
				if used[u] {
					t.Fatalf("unit %d is both free and held", u)
				}
			}
		}
		if a.inUse() != sum {
			t.Fatalf("in use %d, held %d", a.inUse(), sum)
		}
	}
}

// TestParams checks the launch buffer's layout: each parameter at its natural alignment.
func TestParams(t *testing.T) {
	var p params
	p.reset().i32(7).ptr(0x1122334455667788).f32(1.5).i32(-1)
	want := make([]byte, 24)
	binary.LittleEndian.PutUint32(want[0:], 7)
	binary.LittleEndian.PutUint64(want[8:], 0x1122334455667788)
	binary.LittleEndian.PutUint32(want[16:], math.Float32bits(1.5))
	binary.LittleEndian.PutUint32(want[20:], 0xffffffff)
	if string(p.buf) != string(want) {
		t.Fatalf("params % x, want % x", p.buf, want)
	}
	if fmt.Sprint(p.offs) != "[0 8 16 20]" {
		t.Fatalf("parameter offsets %v, want [0 8 16 20]", p.offs)
	}
}

func TestSizeClass(t *testing.T) {
	prev := int64(0)
	for n := int64(1); n < 1<<22; n += 1 + n/7 {
		c := sizeClass(n)
		if c < n || c >= n+max(n/4, 256) || c%256 != 0 {
			t.Fatalf("sizeClass(%d) = %d", n, c)
		}
		if c < prev {
			t.Fatalf("sizeClass is not monotonic at %d", n)
		}
		prev = c
	}
}

func TestGEMVGroup(t *testing.T) {
	tests := []struct{ rows, chunks, sms, want int }{
		{14336, 512, 132, 32},  // Mixtral w1/w3 (bf16, k=4096): plenty of rows
		{4096, 1792, 132, 64},  // Mixtral w2 (k=14336): 4096 rows, long rows
		{768, 384, 132, 128},   // Switch-Base w2 (f32 k=3072 → 384 chunks of 8)
		{8, 96, 132, 32},       // a router: few rows, short rows
		{1, 1 << 20, 132, 256}, // one huge row
	}
	for _, tt := range tests {
		if got := gemvGroup(tt.rows, tt.chunks, tt.sms); got != tt.want {
			t.Errorf("gemvGroup(%d, %d, %d) = %d, want %d", tt.rows, tt.chunks, tt.sms, got, tt.want)
		}
	}
}

// testBlob builds an expert blob with an F32 and a BF16 tensor of known values.
func testBlob(t *testing.T) ([]byte, []float32, []uint16) {
	t.Helper()
	f := make([]float32, 6*10)
	for i := range f {
		f[i] = float32(i) - 7.25
	}
	h := make([]uint16, 3*4)
	for i := range h {
		h[i] = uint16(math.Float32bits(float32(i)*0.5-1) >> 16)
	}
	fb := make([]byte, 4*len(f))
	for i, v := range f {
		binary.LittleEndian.PutUint32(fb[4*i:], math.Float32bits(v))
	}
	hb := make([]byte, 2*len(h))
	for i, v := range h {
		binary.LittleEndian.PutUint16(hb[2*i:], v)
	}
	raw, err := blob.Build(blob.Header{Kind: blob.KindExpert, Model: "m", Block: 1, Expert: 2}, []blob.Tensor{
		{Name: "w1", DType: "F32", Shape: []int{6, 10}, Data: fb},
		{Name: "w2", DType: "BF16", Shape: []int{3, 4}, Data: hb},
	})
	if err != nil {
		t.Fatal(err)
	}
	return raw, f, h
}

// blobTensors parses a blob staged on the host and views its tensors in buf, which holds (or will
// hold) the same bytes, as the worker's pipeline does with an expert it copied to the device.
func blobTensors(buf *DeviceBuffer, staged []byte) (blob.Header, map[string]compute.Tensor, error) {
	h, data, err := blob.Parse(staged)
	if err != nil {
		return blob.Header{}, nil, err
	}
	start := int64(len(staged) - len(data)) // the data section's offset in the blob
	ts := map[string]compute.Tensor{}
	for _, info := range h.Tensors {
		dt := map[string]compute.DType{"F32": compute.F32, "BF16": compute.BF16}[info.DType]
		if dt == 0 {
			return blob.Header{}, nil, fmt.Errorf("tensor %q is %s", info.Name, info.DType)
		}
		t, err := buf.Tensor(start+info.Offset, dt, int(info.Size/int64(dt.Size())))
		if err != nil {
			return blob.Header{}, nil, err
		}
		ts[info.Name] = t
	}
	return h, ts, nil
}

// TestBlobTensorOffsets: the tensors of a blob are device pointers at the blob's own offsets
// (host-side logic: runs without a GPU, on a buffer that is never dereferenced).
func TestBlobTensorOffsets(t *testing.T) {
	raw, _, _ := testBlob(t)
	const base = 0x7f0000000000
	buf := &DeviceBuffer{dev: &Device{}, ptr: base, n: int64(len(raw))}
	h, ts, err := blobTensors(buf, raw)
	if err != nil {
		t.Fatal(err)
	}
	_, data, _ := blob.Parse(raw)
	start := int64(len(raw) - len(data))
	for _, info := range h.Tensors {
		tt := ts[info.Name]
		m := tt.Memory().(*devMem)
		if want := devptr(base + start + info.Offset); m.ptr != want || tt.Offset() != 0 {
			t.Errorf("%s at %#x+%d, want %#x", info.Name, m.ptr, tt.Offset(), want)
		}
		if tt.Bytes() != info.Size {
			t.Errorf("%s is %d bytes, want %d", info.Name, tt.Bytes(), info.Size)
		}
	}
	if ts["w1"].DType() != compute.F32 || ts["w2"].DType() != compute.BF16 {
		t.Errorf("dtypes %s, %s", ts["w1"].DType(), ts["w2"].DType())
	}
	// A tensor past a buffer smaller than the blob is an error.
	small := &DeviceBuffer{dev: &Device{}, ptr: base, n: int64(len(raw)) - 1}
	if _, _, err := blobTensors(small, raw); err == nil {
		t.Error("a blob larger than its buffer was viewed")
	}
	if _, err := buf.Tensor(2, compute.F32, 1); err == nil {
		t.Error("a misaligned tensor was made")
	}
	if _, err := buf.Tensor(0, compute.F32, len(raw)/4+1); err == nil {
		t.Error("a tensor past the buffer's end was made")
	}
}

// TestBackendConformance runs the compute.Backend conformance suite on the GPU.
func TestBackendConformance(t *testing.T) {
	backendtest.Run(t, device(t).Backend())
}

// TestLinearLarge checks the decode GEMV's vector kernels (aligned tensors, k a multiple of 8: the
// conformance suite's views are deliberately misaligned) and the tiled GEMM on model-sized shapes
// against the CPU backend.
func TestLinearLarge(t *testing.T) {
	b := device(t).Backend()
	cpu := compute.NewCPU(2)
	defer cpu.Close()
	rng := rand.New(rand.NewPCG(3, 4))
	uniform := func(n int) []float32 {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(2*rng.Float64() - 1)
		}
		return x
	}
	shapes := [][3]int{{1, 768, 3072}, {1, 3072, 768}, {1, 4096, 14336}, {1, 14336, 4096}, {2, 1024, 1000}, {3, 512, 1001}, {4, 256, 999}, {5, 1024, 77}, {8, 512, 520}, {64, 768, 300}}
	if os.Getenv("PREGATE_CUDA_FAKE") != "" {
		// The fake driver runs the kernels on the CPU: the same paths on smaller matrices.
		shapes = [][3]int{{1, 768, 100}, {1, 2048, 33}, {2, 64, 31}, {3, 128, 17}, {4, 64, 9}, {5, 256, 21}, {6, 32, 7}, {7, 64, 5}, {8, 96, 20}, {12, 64, 70}}
	}
	for _, s := range shapes {
		m, k, n := s[0], s[1], s[2]
		for _, dt := range []compute.DType{compute.F32, compute.BF16} {
			wv := uniform(n * k)
			var wg, wc compute.Tensor
			var err error
			if dt == compute.BF16 {
				bits := make([]uint16, len(wv))
				for i, v := range wv {
					bits[i] = uint16(math.Float32bits(v) >> 16)
				}
				wg, err = b.ConstBF16(bits)
				wc = compute.HostTensorBF16(bits)
			} else {
				wg, err = b.Const(wv)
				wc = compute.HostTensor(wv)
			}
			if err != nil {
				t.Fatal(err)
			}
			x := uniform(m * k)
			xg, err := b.Alloc(compute.F32, m*k)
			if err != nil {
				t.Fatal(err)
			}
			b.Upload(xg, x)
			yg, err := b.Alloc(compute.F32, m*n)
			if err != nil {
				t.Fatal(err)
			}
			b.Linear(yg, xg, m, k, wg, n, false)
			got := make([]float32, m*n)
			if err := b.Download(got, yg); err != nil {
				t.Fatal(err)
			}
			want := make([]float32, m*n)
			cpu.Linear(compute.HostTensor(want), compute.HostTensor(x), m, k, wc, n, false)
			for i := range got {
				// Both sum k products of values in [-1, 1) in float32, in different orders.
				if d := math.Abs(float64(got[i] - want[i])); d > float64(k)*2e-7*4 {
					t.Fatalf("Linear %s m=%d k=%d n=%d: element %d is %v, the CPU says %v", dt, m, k, n, i, got[i], want[i])
				}
			}
			b.Free(xg)
			b.Free(yg)
		}
	}
}

// stage fills a pinned buffer with n bytes of pattern seed.
func stage(t *testing.T, d *Device, n int64, seed byte) *HostBuffer {
	t.Helper()
	h, err := d.AllocHost(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Free)
	for i := range h.Bytes() {
		h.Bytes()[i] = byte(i*7) ^ seed
	}
	return h
}

func waitCopy(ev *Event) error {
	<-ev.Done()
	return ev.Err()
}

// download reads a device buffer's first n bytes (a multiple of 4) through the backend.
func download(t *testing.T, d *Device, buf *DeviceBuffer, n int64) []byte {
	t.Helper()
	v, err := buf.Tensor(0, compute.F32, int(n/4))
	if err != nil {
		t.Fatal(err)
	}
	f := make([]float32, n/4)
	if err := d.Backend().Download(f, v); err != nil {
		t.Fatal(err)
	}
	out := make([]byte, n)
	for i, x := range f {
		binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(x))
	}
	return out
}

// TestPinnedCopy: several copies in flight on the copy stream, each with its event; every event
// completes without error and every buffer holds its own source's bytes.
func TestPinnedCopy(t *testing.T) {
	d := device(t)
	const n = 8 << 20
	var evs []*Event
	var dsts []*DeviceBuffer
	var srcs []*HostBuffer
	for i := range 4 {
		src := stage(t, d, n, byte(i))
		dst, err := d.Alloc(n)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(dst.Free)
		evs = append(evs, d.CopyToDevice(dst, src, n))
		dsts, srcs = append(dsts, dst), append(srcs, src)
	}
	for i, ev := range evs {
		<-ev.Done()
		if err := ev.Err(); err != nil {
			t.Fatalf("copy %d: %v", i, err)
		}
		if got := download(t, d, dsts[i], n); string(got) != string(srcs[i].Bytes()) {
			t.Fatalf("copy %d: the device buffer does not hold its source's bytes", i)
		}
	}
	// A copy larger than either buffer fails through its event, at once.
	ev := d.CopyToDevice(dsts[0], srcs[0], n+1)
	<-ev.Done()
	if ev.Err() == nil {
		t.Fatal("an oversized copy succeeded")
	}
}

// TestStreamWaitsEvent: the compute stream, told to wait for a copy's event, reads the copied bytes
// and not what the buffer held before, without the host waiting for the copy.
func TestStreamWaitsEvent(t *testing.T) {
	d := device(t)
	b := d.backend
	n := int64(256 << 20) // ~5 ms of PCIe: a kernel not ordered after the copy would see old bytes
	if os.Getenv("PREGATE_CUDA_FAKE") != "" {
		n = 16 << 20 // the fake driver copies at once; spare the test machine's memory
	}
	dst, err := d.Alloc(n)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Free()
	old := stage(t, d, n, 0x55)
	if err := waitCopy(d.CopyToDevice(dst, old, n)); err != nil {
		t.Fatal(err)
	}
	fresh := stage(t, d, n, 0xaa)
	src, err := dst.Tensor(0, compute.F32, int(n/4))
	if err != nil {
		t.Fatal(err)
	}
	out, err := b.Alloc(compute.F32, int(n/4))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Free(out)
	ev := d.CopyToDevice(dst, fresh, n)
	d.WaitEvent(ev)
	b.Copy(out, src)
	select {
	case <-ev.Done():
		t.Log("the copy had completed before the host issued the compute (the ordering is still checked)")
	default:
	}
	f := make([]float32, n/4)
	if err := b.Download(f, out); err != nil {
		t.Fatal(err)
	}
	<-ev.Done()
	if ev.Err() != nil {
		t.Fatal(ev.Err())
	}
	want := fresh.Bytes()
	for i, x := range f {
		if got := math.Float32bits(x); got != binary.LittleEndian.Uint32(want[4*i:]) {
			t.Fatalf("word %d is %#x: the compute stream read the buffer before the copy landed", i, got)
		}
	}
	// Waiting on a completed event is a no-op.
	d.WaitEvent(ev)
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
}

// TestBlobToDevice: a blob staged in pinned memory, copied to the arena and parsed from the staging
// buffer gives tensors whose device bytes are the blob's.
func TestBlobToDevice(t *testing.T) {
	d := device(t)
	b := d.backend
	raw, f, h := testBlob(t)
	src := stage(t, d, int64(len(raw)), 0)
	copy(src.Bytes(), raw)
	dst, err := d.Alloc(int64(len(raw)))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Free()
	ev := d.CopyToDevice(dst, src, int64(len(raw)))
	hdr, ts, err := blobTensors(dst, src.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if hdr.Block != 1 || hdr.Expert != 2 {
		t.Fatalf("header %+v", hdr)
	}
	d.WaitEvent(ev)
	got := make([]float32, len(f))
	if err := b.Download(got, ts["w1"]); err != nil {
		t.Fatal(err)
	}
	for i := range f {
		if got[i] != f[i] {
			t.Fatalf("w1[%d] = %v, want %v", i, got[i], f[i])
		}
	}
	// The BF16 tensor, widened by Embed (row i of the [3×4] table).
	out, err := b.Alloc(compute.F32, len(h))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Free(out)
	b.Embed(out, ts["w2"], []int{0, 1, 2}, 4)
	wide := make([]float32, len(h))
	if err := b.Download(wide, out); err != nil {
		t.Fatal(err)
	}
	for i, v := range h {
		if want := math.Float32frombits(uint32(v) << 16); wide[i] != want {
			t.Fatalf("w2[%d] = %v, want %v", i, wide[i], want)
		}
	}
	<-ev.Done()
}

// TestArenaOnDevice: ReserveArena once; Alloc beyond it fails with ErrOutOfMemory.
func TestArenaOnDevice(t *testing.T) {
	d := device(t)
	if err := d.ReserveArena(1 << 20); err == nil {
		t.Fatal("a second ReserveArena succeeded")
	}
	if _, err := d.Alloc(testArena + arenaSlack(testArena) + 1); !errors.Is(err, ErrOutOfMemory) {
		t.Fatalf("Alloc past the arena: %v, want ErrOutOfMemory", err)
	}
	buf, err := d.Alloc(1000)
	if err != nil {
		t.Fatal(err)
	}
	if buf.Ptr()%arenaAlign != 0 || buf.Len() != 1000 || buf.HostView() != nil {
		t.Fatalf("buffer at %#x of %d bytes", buf.Ptr(), buf.Len())
	}
	buf.Free()
	buf.Free() // idempotent
}

// TestKernelSignatures: every kernel the package launches is in both PTX images, with the same
// parameters, and the launch sites' argument kinds are checked against them (see launch).
func TestKernelSignatures(t *testing.T) {
	s80, s90 := signatures(ptxSM80), signatures(ptxSM90)
	if len(s80) == 0 || fmt.Sprint(s80) != fmt.Sprint(s90) {
		t.Fatalf("sm_80 and sm_90 PTX differ in their entries:\n%v\n%v", s80, s90)
	}
	var k kernels
	for _, e := range k.table() {
		sig, ok := s80[e.name]
		if !ok {
			t.Errorf("kernel %s is not in the PTX", e.name)
		}
		if strings.ContainsRune(sig, '?') {
			t.Errorf("kernel %s has a parameter of a kind the launcher cannot pass: %s", e.name, sig)
		}
	}
	if got, want := s80["attention"], "ppppppiiiiifiiii"; got != want {
		t.Errorf("attention's signature %q, want %q", got, want)
	}
}

// TestEveryOp issues every op of the backend once, through each of its kernels (every decode GEMV
// variant, the scalar GEMV, the GEMM; attention with bias and mask), and checks that they all
// launch: the arguments match the kernels' signatures and the launch shapes are valid. The values
// are the conformance suite's business. It runs on a GPU and under the fake driver.
func TestEveryOp(t *testing.T) {
	b := device(t).Backend()
	alloc := func(dt compute.DType, n int) compute.Tensor {
		t.Helper()
		x, err := b.Alloc(dt, n)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Free(x) })
		return x
	}
	const k, n = 64, 40
	x := alloc(compute.F32, gemvMaxM*k+16)
	y := alloc(compute.F32, 64*n)
	wf := alloc(compute.F32, n*k)
	wb := alloc(compute.BF16, n*k)
	big := alloc(compute.F32, 64*k)
	b.Upload(x, make([]float32, x.Len()))
	for m := 1; m <= gemvMaxM; m++ {
		for _, w := range []compute.Tensor{wf, wb} {
			b.Linear(y, x, m, k, w, n, m%2 == 0)                      // vector GEMV
			b.Linear(y, x.View(1, m*k), m, k, w, n, false)            // misaligned x: scalar GEMV
			b.Linear(y, x, m, k-1, w.View(0, n*(k-1)), n, false)      // k not a multiple of 8
			b.Linear(y, big, 64, k, w, n, m == 1)                     // tiled GEMM
			b.Linear(y.View(0, m*n), x, m, 0, w.View(0, 0), n, false) // k = 0
		}
	}
	b.RMSNorm(y, y, 4, n, wf.View(0, n), 1e-6)
	b.Softmax(y, 4, n)
	b.ReLU(y)
	b.GELU(y)
	b.SiLU(y)
	b.Mul(y.View(0, n), y.View(n, n), y.View(2*n, n))
	b.Add(y.View(0, n), y.View(n, n))
	b.Scale(y, 0.5)
	b.RoPE(y, 2, 2, 8, x.View(0, 8), x.View(8, 8))
	b.Embed(y, wb, []int{3, 0, n - 1}, k)
	b.Embed(y, wf, []int{1}, k)
	b.GatherRows(y, big, []int{5, 1, 5}, k)
	b.ScatterAddRows(big, y, []int{2, 2, 7}, []float32{0.5, 1, -1}, k)
	b.Copy(y.View(0, 10), x.View(3, 10))
	const heads, kvHeads, hd, nq, nk = 4, 2, 8, 3, 5
	q := alloc(compute.F32, nq*heads*hd)
	kv := alloc(compute.F32, nk*kvHeads*hd)
	out := alloc(compute.F32, nq*heads*hd)
	bias := alloc(compute.F32, (2*3+1)*heads)
	mask := alloc(compute.F32, nk)
	b.Attention(out, q, kv, kv, nq, nk, &compute.Attention{Heads: heads, KVHeads: kvHeads, HeadDim: hd, Scale: 1,
		Bias: bias, BiasReach: 3, Mask: mask})
	b.Attention(out, q, kv, kv, nq, nk, &compute.Attention{Heads: heads, KVHeads: kvHeads, HeadDim: hd, Scale: 0.3,
		Causal: true, Past: 2, Window: 2})
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
}

// fakeRun are the device tests TestFakeDriver runs under the fake driver.
var fakeRun = []string{"TestOpenErrors", "TestBackendConformance", "TestLinearLarge", "TestPinnedCopy",
	"TestStreamWaitsEvent", "TestBlobToDevice", "TestArenaOnDevice", "TestEveryOp", "TestEngineOnDevice", "TestCloseThenUse", "TestModuleLoadLog",
	"TestCopyFencedBehindFreedReaders"}

// TestFakeDriver runs the device tests, the conformance suite included, against a fake
// libcuda.so.1 (testdata/fakecuda.cc) on a machine without a GPU: the driver loaded by dlopen, the
// context set on every call, the arena, pinned buffers, copies and their events, the stream waiting
// on an event, every launch's arguments against the PTX signatures, and the kernels of
// kernels/kernels.cu themselves, compiled for the CPU (testdata/cudaemu.h: a fiber per CUDA thread)
// and run with the launch's grid, block and parameters. What it cannot check is the GPU's own
// behaviour: PTX assembly (ptxas does, in CI), timing, the real driver's ordering of streams (the
// fake runs everything at once). On a machine with a GPU the device tests run on it and this skips.
func TestFakeDriver(t *testing.T) {
	if os.Getenv("PREGATE_CUDA_FAKE") != "" {
		t.Skip("this is the run under the fake driver")
	}
	if testDev != nil {
		t.Skip("a GPU is here: the device tests ran on it")
	}
	cxx := os.Getenv("CXX")
	if cxx == "" {
		cxx = "c++"
	}
	if _, err := exec.LookPath(cxx); err != nil {
		t.Skipf("no C++ compiler (%s) to build the fake driver", cxx)
	}
	var incs []string
	for _, f := range strings.Fields(os.Getenv("CGO_CFLAGS")) {
		if strings.HasPrefix(f, "-I") {
			incs = append(incs, f)
		}
	}
	dir := t.TempDir()
	build := exec.Command(cxx, append(incs, "-std=c++20", "-O1", "-U_FORTIFY_SOURCE", "-shared", "-fPIC", "-ffp-contract=off",
		"-Wall", "-Werror", "-Wno-unknown-pragmas", "-o", filepath.Join(dir, "libcuda.so.1"), "testdata/fakecuda.cc")...)
	if out, err := build.CombinedOutput(); err != nil {
		if len(incs) == 0 {
			t.Skipf("building the fake driver failed and CGO_CFLAGS names no include directory for cuda.h: %v\n%s", err, out)
		}
		t.Fatalf("building the fake driver: %v\n%s", err, out)
	}
	run := func(env []string, tests ...string) string {
		cmd := exec.Command(os.Args[0], "-test.v", "-test.count=1", "-test.run", "^("+strings.Join(tests, "|")+")$")
		cmd.Env = append(os.Environ(), append(env, "LD_LIBRARY_PATH="+dir, "PREGATE_CUDA_FAKE=1")...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("under the fake driver: %v\n%s", err, out)
		}
		return string(out)
	}
	out := run([]string{"PREGATE_CUDA_REQUIRE=1", "FAKECUDA_TRACE=" + filepath.Join(dir, "trace")}, fakeRun...)
	for _, name := range fakeRun {
		if !strings.Contains(out, "--- PASS: "+name+" ") {
			t.Errorf("%s did not pass under the fake driver:\n%s", name, out)
		}
	}
	// A driver without a GPU: Open says which device is missing and how many there are.
	out = run([]string{"FAKECUDA_NO_DEVICE=1"}, "TestOpenErrors")
	if !strings.Contains(out, "cuda: device 0 not found (0 devices)") || !strings.Contains(out, "--- PASS: TestOpenErrors ") {
		t.Errorf("with a driver and no GPU:\n%s", out)
	}
}

// TestCloseThenUse: a second Device of the same GPU (the primary context is shared and counted)
// closes cleanly with buffers outstanding, Close is idempotent, and every use after it fails with
// ErrClosed or does nothing, without a panic.
func TestCloseThenUse(t *testing.T) {
	device(t)
	d, err := Open(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.ReserveArena(1 << 20); err != nil {
		t.Fatal(err)
	}
	buf, err := d.Alloc(4096)
	if err != nil {
		t.Fatal(err)
	}
	h, err := d.AllocHost(4096)
	if err != nil {
		t.Fatal(err)
	}
	if err := waitCopy(d.CopyToDevice(buf, h, 4096)); err != nil {
		t.Fatal(err)
	}
	h.Free()
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := d.Alloc(1); !errors.Is(err, ErrClosed) {
		t.Errorf("Alloc after Close: %v", err)
	}
	if _, err := d.AllocHost(1); !errors.Is(err, ErrClosed) {
		t.Errorf("AllocHost after Close: %v", err)
	}
	if err := d.ReserveArena(1); !errors.Is(err, ErrClosed) {
		t.Errorf("ReserveArena after Close: %v", err)
	}
	h2 := &HostBuffer{dev: d, b: make([]byte, 8)}
	if err := waitCopy(d.CopyToDevice(buf, h2, 8)); !errors.Is(err, ErrClosed) {
		t.Errorf("CopyToDevice after Close: %v", err)
	}
	buf.Free() // the arena went with the device: nothing to do
	h.Free()
	// The shared device still works.
	if err := testDev.Backend().Sync(); err != nil {
		t.Fatal(err)
	}
}

// TestModuleLoadLog: PTX the driver cannot compile fails Open's module load with the JIT's own log
// in the error (the line and the reason), not just the result code.
func TestModuleLoadLog(t *testing.T) {
	d := device(t)
	bad := []byte(".version 7.8\n.target sm_80\n.address_size 64\n\n.visible .entry broken()\n{\n\tnot_an_instruction;\n\tret;\n}\n\x00")
	m, err := d.ctx.loadModule(bad)
	if err == nil {
		d.ctx.unloadModule(m)
		t.Fatal("a broken PTX image loaded")
	}
	var ce *Error
	if !errors.As(err, &ce) || len(err.Error()) <= len(ce.Error())+2 {
		t.Fatalf("the error carries no JIT log: %v", err)
	}
	t.Logf("%v", err)
}
