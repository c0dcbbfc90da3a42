package worker

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/pregate/pregate/engine"
	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/routing"
)

// gatedCPU is the CPU device presented as a GPU whose compute stream can wait for a copy's event
// (a StreamWaiter): its copies land only when the test opens them, so a test sees whether the
// pipeline handed an expert over before its copy completed, and whether anyone waited for the
// copy on the host first. fail makes the next copy fail as it is enqueued.
type gatedCPU struct {
	*CPU
	mu       sync.Mutex
	enqueued chan *gatedEvent
	waited   []Event // WaitEvent's arguments, in order
	fail     error
}

func newGatedCPU(t *testing.T) *gatedCPU {
	d := &gatedCPU{CPU: NewCPU(), enqueued: make(chan *gatedEvent, 64)}
	t.Cleanup(func() { d.Close() })
	return d
}

func (*gatedCPU) HostAddressable() bool { return false }

func (d *gatedCPU) CopyToDevice(dst DeviceBuffer, src HostBuffer, n int64) Event {
	d.mu.Lock()
	err := d.fail
	d.fail = nil
	d.mu.Unlock()
	ev := &gatedEvent{dst: dst.HostView()[:n], src: src.Bytes()[:n], done: make(chan struct{}), hostWait: make(chan struct{})}
	if err != nil {
		ev.err = err
		close(ev.done)
		return ev
	}
	d.enqueued <- ev
	return ev
}

// WaitEvent implements StreamWaiter. The CPU backend runs each op as it is issued, so the op after a
// wait can run only once the copy has landed: a copy still gated is opened here (a GPU's stream
// would wait for it on the device).
func (d *gatedCPU) WaitEvent(ev Event) error {
	d.mu.Lock()
	d.waited = append(d.waited, ev)
	d.mu.Unlock()
	g := ev.(*gatedEvent)
	g.open()
	<-g.done
	return g.err
}

type gatedEvent struct {
	dst, src []byte
	once     sync.Once
	done     chan struct{}
	err      error
	hostOnce sync.Once
	hostWait chan struct{} // closed once anyone has asked for Done: a host wait for the copy
}

func (e *gatedEvent) open() {
	e.once.Do(func() {
		select {
		case <-e.done: // failed at once
		default:
			copy(e.dst, e.src)
			close(e.done)
		}
	})
}

func (e *gatedEvent) Done() <-chan struct{} {
	e.hostOnce.Do(func() { close(e.hostWait) })
	return e.done
}

func (e *gatedEvent) Err() error { return e.err }

func newGatedPipeline(t *testing.T, dev Device) (*Pipeline, *blobFetcher, *model.Checkpoint) {
	t.Helper()
	ckpt, err := model.OpenCheckpoint(fixture("mixtral-tiny"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ckpt.Close() })
	f := newBlobFetcher(t, ckpt)
	p, err := NewPipeline(context.Background(), PipelineConfig{Mode: ModeOnDemand, Device: dev, Fetcher: f,
		Names: model.ExpertNames(ckpt.Config()), NumExperts: model.ExpertsPerBlock(ckpt.Config()), CacheBudget: 1 << 30, Staging: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p, f, ckpt
}

type acquired struct {
	w   *engine.ExpertWeights
	err error
}

// TestExpertHandedOverBeforeItsCopyLands: on a StreamWaiter device the engine gets an expert as
// soon as its copy is enqueued, and the compute stream, not the host, waits for the copy.
func TestExpertHandedOverBeforeItsCopyLands(t *testing.T) {
	dev := newGatedCPU(t)
	p, f, _ := newGatedPipeline(t, dev)
	k := routing.ExpertKey{Block: 0, Expert: 1}
	p.Hint(k.Block, []int{k.Expert})
	ev := <-dev.enqueued // the copy is enqueued and held
	got := make(chan acquired, 1)
	go func() {
		w, err := p.Acquire(context.Background(), k.Block, k.Expert)
		got <- acquired{w, err}
	}()
	var r acquired
	select {
	case r = <-got: // handed over while the copy was held
	case <-ev.hostWait:
		// Someone waits for the copy on the host: only once the entry is ready may that be the
		// fetch returning its staging buffer.
		p.cache.mu.Lock()
		ent := p.cache.entries[k]
		p.cache.mu.Unlock()
		select {
		case <-ent.ready:
		default:
			t.Error("the pipeline waits on the host for the copy before handing the expert to the engine")
		}
		ev.open()
		r = <-got
	}
	if r.err != nil || r.w == nil {
		t.Fatalf("Acquire: %v", r.err)
	}
	dev.mu.Lock()
	waited := slices.Clone(dev.waited)
	dev.mu.Unlock()
	if len(waited) != 1 || waited[0] != Event(ev) {
		t.Fatalf("WaitEvent got %v, want the expert's copy", waited)
	}
	// The weights are the blob's once the copy has landed.
	<-ev.done
	if !slices.Equal(ev.dst, f.blobs[k]) {
		t.Fatal("the device buffer does not hold the blob after the copy")
	}
	p.Release(k.Block, k.Expert)
	p.EndStep()
}

// TestFailedCopyIsExpertUnavailable: a copy that fails as it is enqueued makes the expert
// unavailable to the Acquire (engine.ErrExpertUnavailable, the affected sequences fail), never
// weights over a buffer the copy did not fill; the failed entry leaves the cache, so the next use
// fetches the expert again.
func TestFailedCopyIsExpertUnavailable(t *testing.T) {
	dev := newGatedCPU(t)
	p, _, _ := newGatedPipeline(t, dev)
	k := routing.ExpertKey{Block: 1, Expert: 2}
	dev.mu.Lock()
	dev.fail = errors.New("copy engine fault")
	dev.mu.Unlock()
	p.Hint(k.Block, []int{k.Expert})
	_, err := p.Acquire(context.Background(), k.Block, k.Expert)
	if !errors.Is(err, engine.ErrExpertUnavailable) || !strings.Contains(err.Error(), "copy engine fault") {
		t.Fatalf("Acquire after a failed copy: %v, want ErrExpertUnavailable", err)
	}
	p.EndStep()
	// The fetch discards the entry once it has seen the failure.
	for {
		p.cache.mu.Lock()
		_, in := p.cache.entries[k]
		p.cache.mu.Unlock()
		if !in {
			break
		}
		runtime.Gosched()
	}
	p.Hint(k.Block, []int{k.Expert})
	ev := <-dev.enqueued
	ev.open()
	if _, err := p.Acquire(context.Background(), k.Block, k.Expert); err != nil {
		t.Fatalf("Acquire after the refetch: %v", err)
	}
	p.Release(k.Block, k.Expert)
	p.EndStep()
}

// TestStreamWaiterGivesTheGoldenTokens: the whole model through the hand-over path gives HF's
// tokens. The copies land on their own, as a GPU's copy stream's do (a goroutine opens them as
// they are enqueued), and WaitEvent waits for any not landed yet.
func TestStreamWaiterGivesTheGoldenTokens(t *testing.T) {
	dir := fixture("mixtral-tiny")
	prompts, want := goldenPrompts(t, dir)
	dev := newGatedCPU(t)
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) }) // after the pipeline's Close, which waits for the copies
	go func() {
		for {
			select {
			case ev := <-dev.enqueued:
				ev.open()
			case <-stop:
				return
			}
		}
	}()
	p, _, ckpt := newGatedPipeline(t, dev)
	generateGolden(t, ckpt, p, engine.Options{Experts: p}, prompts, want)
	dev.mu.Lock()
	defer dev.mu.Unlock()
	if len(dev.waited) == 0 {
		t.Error("the engine never waited for a copy through WaitEvent")
	}
}
