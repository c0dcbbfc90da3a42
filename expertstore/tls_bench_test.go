package expertstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/pregate/pregate/expertstore"
	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/expertstore/client"
	"github.com/pregate/pregate/internal/tlsutil"
	"github.com/pregate/pregate/routing"
)

// BenchmarkFetchTLS fetches a 16 MiB blob over the data plane with mutual TLS (sealed framing),
// store and client in this process: `go test -bench FetchTLS -cpuprofile` shows where the time
// goes. The comparison with raw TCP is `pregate bench fetch --tls` (separate processes).
func BenchmarkFetchTLS(b *testing.B) {
	for _, tlsOn := range []bool{false, true} {
		name := "plaintext"
		if tlsOn {
			name = "tls"
		}
		b.Run(name, func(b *testing.B) {
			pki := &testPKI{}
			a, err := tlsutil.NewAuthority(b.TempDir(), "bench", time.Hour)
			if err != nil {
				b.Fatal(err)
			}
			pki.a = a
			node := func(role, n string) *tlsutil.Reloader {
				if !tlsOn {
					return nil
				}
				r, err := a.Node(tlsutil.Identity{Role: role, Name: n}, []string{"127.0.0.1"}, time.Hour)
				if err != nil {
					b.Fatal(err)
				}
				return r
			}
			cfg := storeConfig("store-0", b.TempDir(), nil)
			cfg.Gossip, cfg.TLS = nil, node(tlsutil.RoleStore, "store-0")
			cfg.MemoryLimit, cfg.MaxBlobBytes, cfg.MaxInflightBytes = 256<<20, 64<<20, 256<<20
			s, err := expertstore.New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			cl := client.New(client.Config{TLS: node(tlsutil.RoleImporter, "bench"), HedgeFraction: 0,
				Transport: client.NewDataTransport(client.DataTransportConfig{Compression: client.CompressNever, TLS: node(tlsutil.RoleWorker, "w")})})
			defer cl.Close()
			data := make([]byte, 16<<20)
			for i := range data {
				data[i] = byte(i * 7)
			}
			ctx := context.Background()
			if _, _, err := cl.Put(ctx, replicaOf(s), data); err != nil {
				b.Fatal(err)
			}
			ref := client.Ref{Digest: blob.Sum(data), Size: int64(len(data))}
			dst := make([]byte, len(data))
			b.SetBytes(int64(len(data)))
			b.ResetTimer()
			for range b.N {
				if err := cl.Fetch(ctx, ref, []routing.Replica{replicaOf(s)}, dst); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
