package worker

import (
	"errors"
	"strings"
	"testing"
)

// A worker whose accelerator fails to open (a cuda binary on a host without a GPU) returns the
// error, having released what it had started (the HTTP listener: the port is free again).
func TestNewFailsWhenTheAcceleratorDoesNotOpen(t *testing.T) {
	errNoGPU := errors.New("cuda: no CUDA driver (libcuda.so.1)")
	cfg := DefaultConfig()
	cfg.Name, cfg.EtcdEndpoints, cfg.Model, cfg.DataDir = "w", []string{"127.0.0.1:1"}, "m", t.TempDir()
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.Device = "cuda:0"
	var asked int64
	cfg.OpenAccelerator = func(cacheBytes int64) (Accelerator, error) {
		asked = cacheBytes
		return nil, errNoGPU
	}
	for range 2 { // twice: nothing of the first attempt is left holding anything
		w, err := New(cfg)
		if w != nil || !errors.Is(err, errNoGPU) || !strings.Contains(err.Error(), "device cuda:0") {
			t.Fatalf("New = %v, %v; want the accelerator's error naming the device", w, err)
		}
	}
	if asked != cfg.ExpertCache {
		t.Errorf("the accelerator was opened for %d bytes of cache, want the expert cache's %d", asked, cfg.ExpertCache)
	}

	cfg.OpenAccelerator = nil
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "without an accelerator") {
		t.Errorf("device cuda:0 without OpenAccelerator: %v", err)
	}
}
