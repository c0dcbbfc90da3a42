package compute_test

import (
	"fmt"
	"testing"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/compute/backendtest"
)

// TestCPUBackend runs the backend conformance suite on the CPU device, single-threaded and with
// worker threads (the ops split their work differently).
func TestCPUBackend(t *testing.T) {
	for _, threads := range []int{1, 3} {
		t.Run(fmt.Sprintf("threads=%d", threads), func(t *testing.T) {
			cpu := compute.NewCPU(threads)
			t.Cleanup(cpu.Close)
			backendtest.Run(t, cpu)
		})
	}
}
