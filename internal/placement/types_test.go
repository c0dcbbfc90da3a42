package placement

import (
	"errors"
	"testing"

	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/routing"
)

func TestKeysRoundTrip(t *testing.T) {
	s := New(nil, "prod/eu")
	if s.Prefix() != "/pregate/prod%2Feu/" {
		t.Fatalf("Prefix() = %q", s.Prefix())
	}
	if got := s.ExpertKey("m", routing.ExpertKey{Block: 12, Expert: 3}); got != "/pregate/prod%2Feu/models/m/placement/00012/00003" {
		t.Fatalf("ExpertKey = %q", got)
	}
	for _, tt := range []struct {
		key  string
		want ParsedKey
	}{
		{s.ExpertKey("org/model", routing.ExpertKey{Block: 0, Expert: 0}), ParsedKey{Model: "org/model"}},
		{s.ExpertKey("m", routing.ExpertKey{Block: MaxIndex, Expert: 7}), ParsedKey{Model: "m", Expert: routing.ExpertKey{Block: MaxIndex, Expert: 7}}},
		{s.DenseKey("org/model", "a/b c"), ParsedKey{Model: "org/model", Dense: "a/b c"}},
	} {
		got, err := s.ParseKey(tt.key)
		if err != nil || got != tt.want {
			t.Errorf("ParseKey(%q) = %+v, %v; want %+v", tt.key, got, err, tt.want)
		}
	}
	for _, key := range []string{
		s.ManifestKey("m"),
		s.ExpertKey("m", routing.ExpertKey{Block: MaxIndex + 1, Expert: 0}),
		s.ExpertKey("", routing.ExpertKey{Block: 0, Expert: 0}),
		s.DenseKey("m", ""),
		s.Prefix() + "models/m/placement/+0001/00001",
		s.Prefix() + "models/m/placement/00001",
		s.StoreKey("a"),
		New(nil, "").ExpertKey("m", routing.ExpertKey{Block: 0, Expert: 0}),
	} {
		if _, err := s.ParseKey(key); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseKey(%q) = %v, want ErrInvalid", key, err)
		}
	}
}

func TestManifestValidate(t *testing.T) {
	tests := []struct {
		name string
		give func(*Manifest)
		ok   bool
	}{
		{"valid", func(m *Manifest) {}, true},
		{"no blocks", func(m *Manifest) { m.Blocks, m.ExpertsPerBlock, m.Experts = 0, nil, nil }, true},
		{"no name", func(m *Manifest) { m.Name = "" }, false},
		{"counts mismatch", func(m *Manifest) { m.Blocks = 3 }, false},
		{"missing expert", func(m *Manifest) { m.Experts = m.Experts[:len(m.Experts)-1] }, false},
		{"extra expert", func(m *Manifest) { m.Experts = append(m.Experts, m.Experts[0]) }, false},
		{"out of order", func(m *Manifest) { m.Experts[0], m.Experts[1] = m.Experts[1], m.Experts[0] }, false},
		{"no digest", func(m *Manifest) { m.Experts[2].Digest = blob.Digest{} }, false},
		{"empty block", func(m *Manifest) { m.ExpertsPerBlock[1] = 0 }, false},
		{"duplicate dense", func(m *Manifest) { m.Dense[1].Name = m.Dense[0].Name }, false},
		{"negative replicas", func(m *Manifest) { m.Replicas = -1 }, false},
	}
	for _, tt := range tests {
		m := testManifest("m", 2, 3)
		tt.give(&m)
		if err := m.Validate(); (err == nil) != tt.ok || err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Validate() = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
	if m := testManifest("m", 3, 5); m.NumExperts() != 15 {
		t.Fatalf("NumExperts() = %d", m.NumExperts())
	}
}

func TestUnderReplicated(t *testing.T) {
	tests := []struct {
		give Placement
		want int
		ok   bool
	}{
		{Placement{}, 0, false},
		{Placement{}, 1, true},
		{*testPlacement(0, "a", "b"), 2, false},
		{Placement{Replicas: []routing.Replica{{Store: "a", State: routing.ReplicaReady}, {Store: "b", State: routing.ReplicaCopying}}}, 2, true},
		{Placement{Replicas: []routing.Replica{{Store: "a", State: routing.ReplicaReady}, {Store: "b", State: routing.ReplicaCopying}}}, 1, false},
	}
	for _, tt := range tests {
		if got := UnderReplicated(tt.give, tt.want); got != tt.ok {
			t.Errorf("UnderReplicated(%+v, %d) = %v, want %v", tt.give, tt.want, got, tt.ok)
		}
	}
}
