package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/worker"
)

// The device benchmark (`pregate bench device`): what bounds a decode step on a GPU, measured through
// the same interfaces the engine and the worker use. An expert's GEMV (Backend.Linear with m = 1)
// reads its weights once, so its bytes/s is set against the device's memory bandwidth; an expert's
// copy from pinned host memory (Device.CopyToDevice) is set against a plain pinned copy (torch's,
// in scripts/gpu-check.sh). On the CPU device both run too (the dry run of gpu-check.sh).

// GEMVShape is one weight matrix [N × K] of dtype DType, multiplied by a K-vector.
type GEMVShape struct {
	N, K  int
	DType compute.DType
}

func (s GEMVShape) String() string {
	return fmt.Sprintf("%dx%d:%s", s.N, s.K, strings.ToLower(s.DType.String()))
}

// Bytes is the weight matrix's size.
func (s GEMVShape) Bytes() int64 { return int64(s.N) * int64(s.K) * int64(s.DType.Size()) }

// ParseGEMVShapes parses "3072x768:f32,14336x4096:bf16".
func ParseGEMVShapes(s string) ([]GEMVShape, error) {
	var out []GEMVShape
	for _, f := range strings.Split(s, ",") {
		dims, dt, ok := strings.Cut(strings.TrimSpace(f), ":")
		ns, ks, ok2 := strings.Cut(dims, "x")
		n, err1 := strconv.Atoi(ns)
		k, err2 := strconv.Atoi(ks)
		if !ok || !ok2 || err1 != nil || err2 != nil || n <= 0 || k <= 0 {
			return nil, fmt.Errorf("bench: GEMV shape %q: want NxK:f32 or NxK:bf16", f)
		}
		sh := GEMVShape{N: n, K: k}
		switch dt {
		case "f32":
			sh.DType = compute.F32
		case "bf16":
			sh.DType = compute.BF16
		default:
			return nil, fmt.Errorf("bench: GEMV shape %q: dtype %q, want f32 or bf16", f, dt)
		}
		out = append(out, sh)
	}
	return out, nil
}

// DeviceOptions configures RunDevice.
type DeviceOptions struct {
	Backend compute.Backend
	// Device is the worker's side of the same device (pinned staging buffers, the copy stream).
	Device worker.Device
	Shapes []GEMVShape
	// CopyBytes is the size of one host-to-device copy (an expert blob).
	CopyBytes int64
	// MinSeconds is how long each measurement runs at least (default 0.2 s); Rounds how many
	// times (the best is reported, default 3).
	MinSeconds float64
	Rounds     int
}

// DeviceResult is RunDevice's outcome; its JSON form is read by scripts/gpu-check.sh.
type DeviceResult struct {
	Device string       `json:"device"`
	GEMV   []GEMVResult `json:"gemv"`
	Copy   CopyResult   `json:"h2d_pinned"`
}

// GEMVResult is one shape's best round.
type GEMVResult struct {
	Shape          string  `json:"shape"`
	Bytes          int64   `json:"weight_bytes"`
	SecondsPerCall float64 `json:"seconds_per_call"`
	BytesPerSecond float64 `json:"bytes_per_second"` // weight bytes read per second
}

// CopyResult is the host-to-device copy's best round.
type CopyResult struct {
	Bytes          int64   `json:"bytes"`
	SecondsPerCopy float64 `json:"seconds_per_copy"`
	BytesPerSecond float64 `json:"bytes_per_second"`
}

// RunDevice measures every GEMV shape and the pinned host-to-device copy.
func RunDevice(ctx context.Context, o DeviceOptions) (DeviceResult, error) {
	if o.Backend == nil || o.Device == nil || o.CopyBytes <= 0 {
		return DeviceResult{}, errors.New("bench: device run needs a backend, a device and a copy size")
	}
	if o.MinSeconds <= 0 {
		o.MinSeconds = 0.2
	}
	if o.Rounds <= 0 {
		o.Rounds = 3
	}
	res := DeviceResult{Device: o.Device.Name()}
	for _, sh := range o.Shapes {
		r, err := runGEMV(ctx, o, sh)
		if err != nil {
			return res, fmt.Errorf("bench: GEMV %s: %w", sh, err)
		}
		res.GEMV = append(res.GEMV, r)
	}
	c, err := runCopy(ctx, o)
	if err != nil {
		return res, fmt.Errorf("bench: host-to-device copy of %d bytes: %w", o.CopyBytes, err)
	}
	res.Copy = c
	return res, nil
}

// timeBest runs op(iters) for o.Rounds rounds of at least o.MinSeconds each and returns the best
// seconds per iteration. op enqueues iters operations and waits for them.
func timeBest(ctx context.Context, o DeviceOptions, op func(iters int) error) (float64, error) {
	if err := op(1); err != nil { // warm-up (kernel load, first-touch)
		return 0, err
	}
	iters, best := 1, 0.0
	for r := 0; r < o.Rounds; {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		start := time.Now()
		if err := op(iters); err != nil {
			return 0, err
		}
		el := time.Since(start).Seconds()
		if el < o.MinSeconds {
			iters = int(float64(iters)*min(100, 1.5*o.MinSeconds/max(el, 1e-9))) + 1
			continue
		}
		if per := el / float64(iters); best == 0 || per < best {
			best = per
		}
		r++
	}
	return best, nil
}

func runGEMV(ctx context.Context, o DeviceOptions, sh GEMVShape) (GEMVResult, error) {
	be := o.Backend
	rng := rand.New(rand.NewPCG(1, uint64(sh.N)))
	var w compute.Tensor
	var err error
	if sh.DType == compute.BF16 {
		host := make([]uint16, sh.N*sh.K)
		for i := range host {
			host[i] = uint16(0x3c00 + rng.IntN(0x200)) // small positive values (about 0.008 to 0.03)
		}
		w, err = be.ConstBF16(host)
	} else {
		host := make([]float32, sh.N*sh.K)
		for i := range host {
			host[i] = rng.Float32() - 0.5
		}
		w, err = be.Const(host)
	}
	if err != nil {
		return GEMVResult{}, err
	}
	defer be.Free(w)
	x, err := be.Alloc(compute.F32, sh.K)
	if err != nil {
		return GEMVResult{}, err
	}
	defer be.Free(x)
	y, err := be.Alloc(compute.F32, sh.N)
	if err != nil {
		return GEMVResult{}, err
	}
	defer be.Free(y)
	xs := make([]float32, sh.K)
	for i := range xs {
		xs[i] = rng.Float32()
	}
	be.Upload(x, xs)
	per, err := timeBest(ctx, o, func(iters int) error {
		for range iters {
			be.Linear(y, x, 1, sh.K, w, sh.N, false)
		}
		return be.Sync()
	})
	if err != nil {
		return GEMVResult{}, err
	}
	return GEMVResult{Shape: sh.String(), Bytes: sh.Bytes(), SecondsPerCall: per, BytesPerSecond: float64(sh.Bytes()) / per}, nil
}

// copiesInFlight is how many copies runCopy keeps enqueued, as the worker's staging buffers do.
const copiesInFlight = 4

func runCopy(ctx context.Context, o DeviceOptions) (CopyResult, error) {
	host, err := o.Device.AllocHost(o.CopyBytes)
	if err != nil {
		return CopyResult{}, err
	}
	defer host.Free()
	b := host.Bytes()
	for i := range b {
		b[i] = byte(i)
	}
	dst := make([]worker.DeviceBuffer, copiesInFlight)
	for i := range dst {
		if dst[i], err = o.Device.Alloc(o.CopyBytes); err != nil {
			return CopyResult{}, err
		}
		defer dst[i].Free()
	}
	per, err := timeBest(ctx, o, func(iters int) error {
		evs := make([]worker.Event, 0, copiesInFlight)
		for i := range iters {
			if len(evs) == copiesInFlight {
				if err := worker.Wait(ctx, evs[0]); err != nil {
					return err
				}
				evs = evs[1:]
			}
			evs = append(evs, o.Device.CopyToDevice(dst[i%copiesInFlight], host, o.CopyBytes))
		}
		for _, ev := range evs {
			if err := worker.Wait(ctx, ev); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return CopyResult{}, err
	}
	return CopyResult{Bytes: o.CopyBytes, SecondsPerCopy: per, BytesPerSecond: float64(o.CopyBytes) / per}, nil
}
