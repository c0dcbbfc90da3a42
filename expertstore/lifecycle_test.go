package expertstore

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// TestErrWhenAServerDies closes the gRPC or the data-plane listener under a running store, as a
// failing network stack would: the store reports the failure (Failed, Err, Serve returns it), and
// a normal Close is not one.
func TestErrWhenAServerDies(t *testing.T) {
	for _, tt := range []struct {
		name string
		lis  func(*Server) net.Listener
	}{
		{"grpc", func(s *Server) net.Listener { return s.lis }},
		{"data plane", func(s *Server) net.Listener { return s.dataLis }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.NodeName, cfg.ListenAddr = "s", "127.0.0.1:0"
			s, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			served := make(chan error, 1)
			go func() { served <- s.Serve(context.Background()) }()
			tt.lis(s).Close()
			select {
			case err := <-served:
				if err == nil || !strings.HasPrefix(err.Error(), tt.name+":") || s.Err() == nil || err.Error() != s.Err().Error() {
					t.Fatalf("Serve returned %v, Err %v: want the %s failure", err, s.Err(), tt.name)
				}
			case <-time.After(10 * time.Second):
				s.Close()
				t.Fatal("the store did not report its dead listener")
			}
		})
	}
	cfg := DefaultConfig()
	cfg.NodeName, cfg.ListenAddr = "s", "127.0.0.1:0"
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Serve(ctx); err != nil || s.Err() != nil {
		t.Fatalf("a normal stop: Serve %v, Err %v", err, s.Err())
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
