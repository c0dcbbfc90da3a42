// Package routing decides where things go, in both senses an MoE cluster has: which experts a token
// goes to, and which stores an expert comes from. It is pure code (no network, no etcd), so the
// engine, the coordinator, the importer and the worker's fetch path all decide the same way.
//
// Tokens to experts (gate.go): a MoE block computes router logits [tokens × experts] (engine), Route
// picks each token's experts and weights (softmax, top-k in torch's order, renormalisation) and
// applies the per-sequence expert capacity. A pre-gated checkpoint computes the same thing one block
// early with the previous block's pre-gate matrix, so the next block's experts are known before they
// are needed.
//
// The cluster's identities (identity.go): ExpertKey names an expert (MoE block, index) from the etcd
// record to the device, and Replica is the one replica type (a store, its state, and — once resolved
// against the store records — its addresses).
//
// Experts to stores: Place (placement.go) assigns every blob to R stores by weighted rendezvous
// hashing over the live stores' capacities, and Plan turns a change of assignment into copies first,
// drops after, so a blob never has fewer ready replicas than before. A worker fetches through a
// Snapshot (snapshot.go): an immutable view of a model's placement, keyed by ExpertKey, whose entries
// carry the blob's digest, size and replicas with their stores' addresses, healthy stores first —
// one lookup, then client.Fetch. Snapshots are swapped through an atomic.Pointer: the hot path takes
// no lock.
package routing
