package membership

import (
	"errors"
	"testing"
)

// FuzzDecodeMeta decodes what any node might gossip about itself: a Meta or an error wrapping
// ErrBadMeta, never a panic; what decodes encodes again and decodes to the same.
func FuzzDecodeMeta(f *testing.F) {
	for _, m := range []Meta{{Role: RoleStore, GRPCAddr: "10.0.0.1:7070", DataAddr: "10.0.0.1:7071", Capacity: 1 << 30, Used: 5, Blobs: 2, Epoch: 9},
		{Role: RoleWorker, HTTPAddr: "10.0.0.2:8000"}, {Role: RoleCoordinator}} {
		b, err := m.Encode()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"role":"store","l":true}`))
	f.Add([]byte(`{"role":"","capacity":-1}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMeta(b)
		if err != nil {
			if !errors.Is(err, ErrBadMeta) {
				t.Fatalf("error %v does not wrap ErrBadMeta", err)
			}
			return
		}
		if m.Role == "" {
			t.Fatal("decoded a meta without a role")
		}
		enc, err := m.Encode()
		if err != nil {
			return // decodable but over the size limit or otherwise not ours to send
		}
		again, err := DecodeMeta(enc)
		if err != nil || again != m {
			t.Fatalf("round trip: %+v → %+v (%v)", m, again, err)
		}
	})
}
