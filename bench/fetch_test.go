package bench

import (
	"context"
	"testing"

	"github.com/pregate/pregate/expertstore"
	"github.com/pregate/pregate/routing"
)

func TestRunReportsBothRates(t *testing.T) {
	cfg := expertstore.DefaultConfig()
	cfg.NodeName, cfg.ListenAddr, cfg.MemoryLimit = "bench", "127.0.0.1:0", 64<<20
	s, err := expertstore.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := routing.Replica{Store: "bench", GRPCAddr: s.Addr(), DataAddr: s.DataAddr()}
	res, err := RunFetch(context.Background(), r, FetchOptions{Size: 2 << 20, Count: 2, Rounds: 2, MinBytes: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if res.FetchBytesPerSecond <= 0 || res.TCPBytesPerSecond <= 0 || res.GRPCBytesPerSecond <= 0 {
		t.Fatalf("rates %+v", res)
	}
	// Receiving a GB costs some CPU on any machine (the copy out of the socket at least), and far
	// less than 10 s (100 MB/s per core; the store runs in this process here, so it counts too).
	for name, c := range map[string]float64{"fetch": res.FetchCPUSecondsPerGB, "tcp": res.TCPCPUSecondsPerGB} {
		if c <= 0 || c > 10 {
			t.Fatalf("%s: %v CPU seconds per GB", name, c)
		}
	}
	if r := res.FetchBytesPerSecond / res.TCPBytesPerSecond; r != res.Ratio {
		t.Fatalf("ratio %v, rates say %v", res.Ratio, r)
	}
	if st := s.Stats(); st.Fetches < 3*4*2 {
		t.Fatalf("store served %d fetches, want at least %d", st.Fetches, 3*4*2)
	}
}
