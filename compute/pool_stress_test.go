package compute

import (
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestPoolStress drives several pools from many goroutines at once, with GOMAXPROCS above and below
// the pools' sizes and goroutines that hog the CPU, and checks after every op that it did exactly
// its work before returning (each index of a ParallelFor once, every MatMulT element right) and
// that no op hangs. A short spin window makes workers and callers park on almost every op, which is
// where the wake-up protocol is exercised; hogs and GOMAXPROCS < threads make the scheduler preempt
// goroutines between any two of its steps.
//
// It catches the lost-wakeup protocol that this pool replaced (see docs/ARCHITECTURE.md, "The
// compute pool") in most runs of a second on 2 cores; PREGATE_POOL_STRESS=<factor> scales its 7 s
// (-short: a quarter of it).
func TestPoolStress(t *testing.T) {
	scale := 1.0
	if testing.Short() {
		scale = 0.25
	}
	if s := os.Getenv("PREGATE_POOL_STRESS"); s != "" {
		var err error
		if scale, err = strconv.ParseFloat(s, 64); err != nil || scale <= 0 {
			t.Fatalf("PREGATE_POOL_STRESS=%q: want a positive factor", s)
		}
	}
	oldMinPar, oldSpin := minParWork, spinWindow
	minParWork = 0
	t.Cleanup(func() { minParWork, spinWindow = oldMinPar, oldSpin })
	procs := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(procs) })

	for _, tt := range []struct {
		maxprocs int
		spin     time.Duration
		hogs     int
		d        time.Duration
	}{
		// More Ps than cores: the OS preempts threads anywhere, for milliseconds. These two caught
		// the old protocol in 40-60% of 1 s runs each on 2 cores.
		{maxprocs: 8, spin: 200 * time.Microsecond, d: 2500 * time.Millisecond},
		{maxprocs: 8, spin: 50 * time.Microsecond, hogs: 3, d: 2500 * time.Millisecond},
		// Fewer Ps than a pool's threads: workers and callers share Ps and park all the time.
		{maxprocs: 1, spin: time.Microsecond, hogs: 1, d: time.Second},
		{maxprocs: 2, spin: 0, hogs: 2, d: time.Second},
	} {
		t.Run(fmt.Sprintf("gomaxprocs=%d/spin=%v/hogs=%d", tt.maxprocs, tt.spin, tt.hogs), func(t *testing.T) {
			runtime.GOMAXPROCS(tt.maxprocs)
			spinWindow = tt.spin
			stressPools(t, time.Duration(float64(tt.d)*scale), tt.hogs)
		})
	}
}

// stressPools runs pools of 2, 3, 4 and 6 threads, each shared by three caller goroutines that take
// turns with it (a CPU runs one op at a time), for d.
func stressPools(t *testing.T, d time.Duration, hogs int) {
	var stop atomic.Bool
	var hogWG sync.WaitGroup
	for range hogs {
		hogWG.Add(1)
		go func() {
			defer hogWG.Done()
			x := 0
			for !stop.Load() {
				for i := range 1000 {
					x += i
				}
			}
			_ = x
		}()
	}
	defer func() { stop.Store(true); hogWG.Wait() }()

	var ops atomic.Int64
	var failed atomic.Bool
	fail := func(format string, args ...any) {
		if failed.CompareAndSwap(false, true) {
			t.Errorf(format, args...)
		}
	}
	// A watchdog: an op that never returns cannot be failed from its own goroutine, so a hang
	// crashes the test binary with every goroutine's stack.
	done := make(chan struct{})
	go func() {
		last, since := ops.Load(), time.Now()
		for {
			select {
			case <-done:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if n := ops.Load(); n != last {
				last, since = n, time.Now()
			} else if time.Since(since) > 5*time.Second {
				debug.SetTraceback("all")
				panic("compute: pool stress: no op completed for 5s (hung)")
			}
		}
	}()
	defer close(done)

	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for pi, threads := range []int{2, 3, 4, 6} {
		c := NewCPU(threads)
		defer c.Close()
		turn := make(chan struct{}, 1)
		turn <- struct{}{}
		for ci := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(pi), uint64(ci)))
				s := newStressScratch(r)
				for time.Now().Before(deadline) && !failed.Load() {
					<-turn
					err := s.op(c, r)
					turn <- struct{}{}
					if err != nil {
						fail("pool of %d threads: %v", threads, err)
						return
					}
					ops.Add(1)
				}
			}()
		}
	}
	wg.Wait()
	t.Logf("%d ops", ops.Load())
}

// stressScratch is one caller's buffers: inputs with small-integer values, so that every product
// is exact in float32 whatever the summation order, and their expected products.
type stressScratch struct {
	marks    []atomic.Int32
	a, w     []float32
	dst, ref []float32
	m, k, n  int
}

func newStressScratch(r *rand.Rand) *stressScratch {
	s := &stressScratch{m: 1 + r.IntN(6), k: 8 + r.IntN(24), n: 16 + r.IntN(120)}
	s.a, s.w = make([]float32, s.m*s.k), make([]float32, s.n*s.k)
	for i := range s.a {
		s.a[i] = float32(r.IntN(7) - 3)
	}
	for i := range s.w {
		s.w[i] = float32(r.IntN(7) - 3)
	}
	s.dst, s.ref = make([]float32, s.m*s.n), make([]float32, s.m*s.n)
	for i := range s.m {
		for j := range s.n {
			var sum float32
			for l := range s.k {
				sum += s.a[i*s.k+l] * s.w[j*s.k+l]
			}
			s.ref[i*s.n+j] = sum
		}
	}
	s.marks = make([]atomic.Int32, 512)
	return s
}

// op runs one ParallelFor or MatMulT on c and checks that it was complete when it returned.
func (s *stressScratch) op(c *CPU, r *rand.Rand) error {
	if r.IntN(2) == 0 {
		n := 1 + r.IntN(len(s.marks))
		for i := range n {
			s.marks[i].Store(0)
		}
		c.ParallelFor(n, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				s.marks[i].Add(1)
			}
		})
		for i := range n {
			if v := s.marks[i].Load(); v != 1 {
				return fmt.Errorf("ParallelFor(%d) returned with index %d visited %d times", n, i, v)
			}
		}
		return nil
	}
	for i := range s.dst {
		s.dst[i] = -1e9
	}
	c.MatMulT(s.dst, s.a, s.m, s.k, s.w, s.n, false)
	for i, v := range s.dst {
		if v != s.ref[i] {
			return fmt.Errorf("MatMulT %dx%dx%d returned with dst[%d] = %v, want %v", s.m, s.k, s.n, i, v, s.ref[i])
		}
	}
	return nil
}
