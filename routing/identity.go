package routing

import (
	"cmp"
	"fmt"
)

// ExpertKey names one expert of a model: its MoE block, in forward order as model.MoELayout numbers
// them (the Switch encoder's sparse blocks, then the decoder's; Mixtral's layers), and its index in
// the block. It is the one name of an expert from etcd to the device: placement records, the
// routing snapshot, the worker's cache and its fetches all use it.
type ExpertKey struct {
	Block  int `json:"block"`
	Expert int `json:"expert"`
}

// Compare orders keys by block, then expert (the order of range reads and of a manifest's experts).
func (k ExpertKey) Compare(o ExpertKey) int {
	return cmp.Or(cmp.Compare(k.Block, o.Block), cmp.Compare(k.Expert, o.Expert))
}

func (k ExpertKey) String() string { return fmt.Sprintf("%d/%d", k.Block, k.Expert) }

// ReplicaState says whether a replica serves its blob.
type ReplicaState string

// Replica states.
const (
	ReplicaReady   ReplicaState = "ready"   // the store holds the blob and serves it
	ReplicaCopying ReplicaState = "copying" // the store is receiving the blob; not served yet
)

// Replica is one store holding (or receiving) a blob: the one replica type of placement records,
// routing snapshots, fetches and store-to-store copies. A placement record stores Store and State;
// whoever resolves it against the store records (a Snapshot, the coordinator) fills in the
// addresses, which are never stored with the placement.
type Replica struct {
	Store    string       `json:"store"`
	State    ReplicaState `json:"state"`
	GRPCAddr string       `json:"-"` // the store's gRPC API
	DataAddr string       `json:"-"` // the store's data plane
}

// Ready reports whether the replica serves its blob.
func (r Replica) Ready() bool { return r.State == ReplicaReady }
