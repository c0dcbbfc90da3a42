// Package membership is how pregate's nodes find each other: every store, worker and coordinator
// runs one Member, which gossips the node's Meta (role, addresses, capacity) over
// hashicorp/memberlist and reports the other nodes as they join, change and leave.
//
// A Member is a thin layer over memberlist that adds what the rest of pregate needs and memberlist
// leaves out:
//
//   - a typed, size-checked Meta instead of raw bytes;
//   - a view of every node seen, including dead and left ones (memberlist's Members lists only live
//     ones), so a coordinator can tell "store s3 died" from "never heard of s3";
//   - events on a channel that never blocks memberlist (drop-oldest, counted);
//   - memberlist's log lines routed to an injected *slog.Logger.
package membership

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/hashicorp/memberlist"
)

// Errors. Each is wrapped with context; test with errors.Is.
var (
	// ErrInvalidConfig: Config.Validate failed.
	ErrInvalidConfig = errors.New("membership: invalid config")
	// ErrMetaTooLarge: a Meta's encoding exceeds MetaMaxSize.
	ErrMetaTooLarge = errors.New("membership: meta too large")
	// ErrBadMeta: bytes that are not an encoded Meta.
	ErrBadMeta = errors.New("membership: malformed meta")
	// ErrJoin: none of the given seeds could be reached (or they refused us, e.g. another key).
	ErrJoin = errors.New("membership: join failed")
	// ErrTimeout: a leave or meta update was not confirmed as gossiped within its timeout. The
	// change still took effect locally and keeps spreading.
	ErrTimeout = errors.New("membership: broadcast timeout")
	// ErrLeft: the Member has left the cluster (Leave); it can no longer join or update its meta.
	ErrLeft = errors.New("membership: left the cluster")
	// ErrClosed: the Member is closed.
	ErrClosed = errors.New("membership: closed")
	// ErrBadKey: LoadKey could not read a usable key.
	ErrBadKey = errors.New("membership: bad key")
)

// Role is what a node does in the cluster.
type Role string

// The roles of a pregate cluster.
const (
	RoleStore       Role = "store"       // CPU node holding expert weights
	RoleWorker      Role = "worker"      // GPU node running the model
	RoleCoordinator Role = "coordinator" // places experts on stores
)

func (r Role) valid() bool {
	return r == RoleStore || r == RoleWorker || r == RoleCoordinator
}

// MetaMaxSize is the largest encoded Meta memberlist will gossip (memberlist.MetaMaxSize).
const MetaMaxSize = memberlist.MetaMaxSize

// Meta is what a node gossips about itself. Its JSON encoding (short keys) must fit in MetaMaxSize
// bytes; Encode checks.
type Meta struct {
	Role     Role   `json:"r"`
	GRPCAddr string `json:"g,omitempty"` // host:port of the node's gRPC API
	DataAddr string `json:"d,omitempty"` // host:port of the node's bulk data plane (stores)
	HTTPAddr string `json:"h,omitempty"` // workers
	Capacity int64  `json:"c,omitempty"` // bytes
	Used     int64  `json:"u,omitempty"` // bytes
	Blobs    int64  `json:"b,omitempty"`
	Epoch    uint64 `json:"e,omitempty"` // bumped by the node when it restarts (New sets start time in unix ms if 0)
}

// Encode returns the gossip encoding of m, or an error wrapping ErrMetaTooLarge that names the size
// when it is over MetaMaxSize.
func (m Meta) Encode() ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil { // cannot happen for these field types; kept for honesty
		return nil, fmt.Errorf("membership: encode meta: %w", err)
	}
	if len(b) > MetaMaxSize {
		return nil, fmt.Errorf("%w: encodes to %d bytes, limit %d", ErrMetaTooLarge, len(b), MetaMaxSize)
	}
	return b, nil
}

// wireMeta is what is actually gossiped: Meta plus flags of this package's own. Leaving (or
// Stopping) is set just before a graceful leave, so that the others can report the node as left
// (or stopped, and expected back) rather than dead (memberlist v0.7.0 does not tell its
// EventDelegate which: the Node it passes always has State alive). DecodeMeta ignores the extra
// keys, so Meta's own keys must never use "l" or "s".
type wireMeta struct {
	Meta
	Leaving  bool `json:"l,omitempty"`
	Stopping bool `json:"s,omitempty"`
}

// departure is how a node goes: not at all, for good (Leave) or for a restart (Stop).
type departure int

const (
	staying departure = iota
	leaving
	stopping
)

// encodeWire encodes m with the departure's flag, dropping the flag if it would not fit (the node
// is then reported dead instead: harmless).
func encodeWire(m Meta, dep departure) ([]byte, error) {
	b, err := m.Encode()
	if err != nil || dep == staying {
		return b, err
	}
	if w, err := json.Marshal(wireMeta{Meta: m, Leaving: dep == leaving, Stopping: dep == stopping}); err == nil && len(w) <= MetaMaxSize {
		return w, nil
	}
	return b, nil
}

func decodeWire(b []byte) (wireMeta, error) {
	var w wireMeta
	if err := json.Unmarshal(b, &w); err != nil {
		return wireMeta{}, fmt.Errorf("%w: %d bytes: %v", ErrBadMeta, len(b), err)
	}
	if w.Role == "" {
		return wireMeta{}, fmt.Errorf("%w: no role", ErrBadMeta)
	}
	return w, nil
}

// DecodeMeta parses an encoded Meta. Unknown fields are ignored (a newer node may gossip more);
// anything that is not a JSON object with a role is an error wrapping ErrBadMeta.
func DecodeMeta(b []byte) (Meta, error) {
	w, err := decodeWire(b)
	return w.Meta, err
}

// State is a node's liveness as this Member knows it.
type State int

// Node states, in memberlist's order.
const (
	StateAlive   State = iota
	StateSuspect       // not reported by memberlist v0.7.0; see Member.Members
	StateDead          // failed: stopped answering probes
	StateLeft          // left gracefully, for good (Leave)
	StateStopped       // stopped gracefully, expected back (Stop): a restart
)

func (s State) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateSuspect:
		return "suspect"
	case StateDead:
		return "dead"
	case StateLeft:
		return "left"
	case StateStopped:
		return "stopped"
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// Node is one member of the cluster.
type Node struct {
	Name  string
	Addr  string // gossip host:port
	Meta  Meta
	State State
}

// EventType says what happened to a node.
type EventType int

// Event types.
const (
	EventJoin   EventType = iota // a node appeared, or came back after dead/left
	EventLeave                   // a node died or left; Node.State says which
	EventUpdate                  // a live node's Meta changed
)

func (t EventType) String() string {
	switch t {
	case EventJoin:
		return "join"
	case EventLeave:
		return "leave"
	case EventUpdate:
		return "update"
	}
	return "EventType(" + strconv.Itoa(int(t)) + ")"
}

// Event is one membership change, with the node as it was right after it.
type Event struct {
	Type EventType
	Node Node
}
