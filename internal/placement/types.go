package placement

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/routing"
)

// MaxIndex is the largest block or expert number a key can hold: keys spell them with five digits
// so that a range read returns them in numeric order.
const MaxIndex = 99999

// Manifest describes a published model: what every blob is and how big. With the placements
// (which say where each blob is) it is everything a worker needs to fetch the model, and with
// Replicas everything a status command needs to count under-replicated experts.
//
// It is one etcd value, so etcd's request limit (--max-request-bytes, 1.5 MiB by default) bounds
// it: about 85 bytes of JSON per expert, room for some 17 000 experts (DeepSeek-V3 has 14 848).
type Manifest struct {
	Name string `json:"name"` // the model's name in the cluster; any string ("org/model" is fine)
	Arch string `json:"arch"` // HF model_type: "switch_transformers", "mixtral"
	// DType is the checkpoint dtype of the expert tensors ("F32", "BF16", …).
	DType string `json:"dtype"`

	// Blocks is the number of MoE blocks; ExpertsPerBlock[b] the number of experts of block b.
	Blocks          int   `json:"blocks"`
	ExpertsPerBlock []int `json:"experts_per_block"`

	// Experts has one entry per (block, expert), in Key order: Experts[i] is the i-th key when
	// counting block by block.
	Experts []ExpertEntry `json:"experts"`
	// Dense lists the blobs holding every non-expert tensor (embeddings, attention, norms, routers).
	Dense []DenseEntry `json:"dense"`

	// Config is the checkpoint's HF config.json (compacted): with the dense blobs, what a worker
	// rebuilds the model from.
	Config json.RawMessage `json:"config,omitempty"`
	// Tokenizer names the checkpoint's tokenizer file ("tokenizer.json", "tokenizer.model",
	// "spiece.model"), "" when it has none. Its files travel in the last dense blob (see
	// internal/modelblobs); a worker writes them next to config.json and loads them with the
	// model. ChatTemplate is tokenizer_config.json's chat template, "" when none.
	Tokenizer    string `json:"tokenizer,omitempty"`
	ChatTemplate string `json:"chat_template,omitempty"`

	// Replicas is the replication factor wanted for this model's blobs; 0 means the cluster default.
	Replicas  int       `json:"replicas"`
	CreatedAt time.Time `json:"created_at"`
}

// ExpertEntry is one expert blob of a manifest.
type ExpertEntry struct {
	routing.ExpertKey
	Digest blob.Digest `json:"digest"` // 32 lowercase hex characters in JSON
	Size   int64       `json:"size"`   // bytes of the blob
}

// DenseEntry is one dense blob of a manifest.
type DenseEntry struct {
	Name   string      `json:"name"` // as in the blob's placement key (DenseKey)
	Digest blob.Digest `json:"digest"`
	Size   int64       `json:"size"`
}

// NumExperts returns the number of experts over all blocks.
func (m Manifest) NumExperts() int {
	n := 0
	for _, e := range m.ExpertsPerBlock {
		n += e
	}
	return n
}

// Expert returns the entry for k.
func (m Manifest) Expert(k routing.ExpertKey) (ExpertEntry, bool) {
	i, ok := slices.BinarySearchFunc(m.Experts, k, func(e ExpertEntry, k routing.ExpertKey) int { return e.Compare(k) })
	if !ok {
		return ExpertEntry{}, false
	}
	return m.Experts[i], true
}

// Validate checks that m is complete and consistent, wrapping ErrInvalid.
func (m Manifest) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: manifest %q: "+format, append([]any{ErrInvalid, m.Name}, args...)...)
	}
	switch {
	case m.Name == "":
		return bad("no name")
	case m.Blocks < 0 || m.Blocks > MaxIndex+1:
		return bad("%d blocks", m.Blocks)
	case len(m.ExpertsPerBlock) != m.Blocks:
		return bad("%d blocks but %d expert counts", m.Blocks, len(m.ExpertsPerBlock))
	case m.Replicas < 0:
		return bad("replicas %d", m.Replicas)
	}
	i := 0
	for b, n := range m.ExpertsPerBlock {
		if n < 1 || n > MaxIndex+1 {
			return bad("block %d has %d experts", b, n)
		}
		for e := range n {
			if i >= len(m.Experts) {
				return bad("%d expert entries, want %d", len(m.Experts), m.NumExperts())
			}
			x := m.Experts[i]
			if want := (routing.ExpertKey{Block: b, Expert: e}); x.ExpertKey != want {
				return bad("expert entry %d is %v, want %v", i, x.ExpertKey, want)
			}
			if x.Digest.IsZero() || x.Size < 0 {
				return bad("expert %v: digest %s, size %d", x.ExpertKey, x.Digest, x.Size)
			}
			i++
		}
	}
	if i != len(m.Experts) {
		return bad("%d expert entries, want %d", len(m.Experts), i)
	}
	seen := map[string]bool{}
	for _, d := range m.Dense {
		if d.Name == "" || d.Digest.IsZero() || d.Size < 0 || seen[d.Name] {
			return bad("dense entry %+v: empty or duplicate name, no digest or negative size", d)
		}
		seen[d.Name] = true
	}
	return nil
}

// Placement says where one blob lives.
type Placement struct {
	Digest   blob.Digest       `json:"digest"`
	Size     int64             `json:"size"`
	Replicas []routing.Replica `json:"replicas"` // Store and State only (addresses are never stored)
	// Epoch counts the changes the coordinator made to this placement (its author increments it).
	Epoch int64 `json:"epoch"`
	// Writer names who wrote this version: a coordinator's name, or "import".
	Writer string `json:"writer,omitempty"`
}

// Ready returns the stores whose replica is ready, in placement order.
func (p Placement) Ready() []string {
	var out []string
	for _, r := range p.Replicas {
		if r.Ready() {
			out = append(out, r.Store)
		}
	}
	return out
}

// Validate checks p, wrapping ErrInvalid.
func (p Placement) Validate() error {
	if p.Digest.IsZero() || p.Size < 0 || p.Epoch < 0 {
		return fmt.Errorf("%w: placement: digest %s, size %d, epoch %d", ErrInvalid, p.Digest, p.Size, p.Epoch)
	}
	seen := map[string]bool{}
	for _, r := range p.Replicas {
		if r.Store == "" || seen[r.Store] || r.State != routing.ReplicaReady && r.State != routing.ReplicaCopying || r.GRPCAddr != "" || r.DataAddr != "" {
			return fmt.Errorf("%w: placement: replica %+v: empty or duplicate store, unknown state, or an address", ErrInvalid, r)
		}
		seen[r.Store] = true
	}
	return nil
}

// UnderReplicated reports whether p has fewer than want ready replicas.
func UnderReplicated(p Placement, want int) bool {
	n := 0
	for _, r := range p.Replicas {
		if r.Ready() {
			n++
		}
	}
	return n < want
}

// Store states, as the coordinator reports them in StoreRecord.State.
const (
	StoreAlive   = "alive"   // gossip says alive and the store answers
	StoreSuspect = "suspect" // gossip says alive but the store did not answer the coordinator's probe
	StoreDead    = "dead"    // gossip declared it failed
	StoreLeft    = "left"    // it left the cluster gracefully, for good
	StoreStopped = "stopped" // it stopped gracefully to restart (SIGTERM): expected back
)

// StoreRecord is what the coordinator publishes about a store: gossip's view of it, its address and
// the counters its last Stats probe returned. The leader rewrites it as these change; it outlives
// the store (a dead store's record says dead) and any one coordinator.
type StoreRecord struct {
	Name     string `json:"name"`
	GRPCAddr string `json:"grpc_addr"`
	DataAddr string `json:"data_addr"`
	// GossipAddr is where the store gossips: a coordinator restarted without --join finds the
	// cluster's gossip again through it.
	GossipAddr string `json:"gossip_addr,omitempty"`
	State      string `json:"state"`    // StoreAlive, StoreSuspect, StoreDead, StoreStopped or StoreLeft
	Capacity   int64  `json:"capacity"` // bytes it may hold
	Used       int64  `json:"used"`     // bytes it holds
	Blobs      int64  `json:"blobs"`
	Epoch      uint64 `json:"epoch"` // the store's incarnation (as gossiped)
	// Verified: the store has answered a coordinator's probe as itself (with TLS, over a
	// certificate naming it). With TLS only a verified store is given blobs: a node that merely
	// gossips that it is a store, or holds another role's certificate, never is.
	Verified bool `json:"verified,omitempty"`
	// Joined is when a coordinator first saw the store; Since when State last changed.
	Joined  time.Time `json:"joined"`
	Since   time.Time `json:"since"`
	Updated time.Time `json:"updated"`
}

// WorkerRecord is what a worker publishes about itself, under a lease.
type WorkerRecord struct {
	Name     string    `json:"name"`
	HTTPAddr string    `json:"http_addr"`
	Model    string    `json:"model"`
	Mode     string    `json:"mode"` // resident, ondemand, prefetch-all, pregated, speculative
	Updated  time.Time `json:"updated"`
}
