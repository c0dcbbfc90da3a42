package membership

import (
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// delegate receives memberlist's callbacks (memberlist.Delegate and memberlist.EventDelegate).
//
// Blocking rule: memberlist calls these from its own goroutines — the packet loop, the probe
// loop, suspicion timers — and calls the Notify* methods while holding its node lock. They must
// never block and never call back into memberlist. So each does a bounded amount of in-memory
// work under a short mutex: NodeMeta copies the encoded meta; Notify* copy the node into the view
// and append the event to queue, which the pump goroutine (Member.pump) forwards to the Events
// channel. They stay safe to call after Close (memberlist may still be finishing a probe or a
// suspicion timer then): the queue drops what arrives once closed.
type delegate struct {
	logger *slog.Logger

	metaMu sync.Mutex
	meta   Meta      // local meta
	depart departure // gossip the leaving or stopping flag (set by Leave, Stop)
	wire   []byte    // encodeWire(meta, depart), ≤ MetaMaxSize

	view  view
	queue eventQueue
}

var (
	_ memberlist.Delegate      = (*delegate)(nil)
	_ memberlist.EventDelegate = (*delegate)(nil)
)

func (d *delegate) localMeta() Meta {
	d.metaMu.Lock()
	defer d.metaMu.Unlock()
	return d.meta
}

// setMeta makes m (and the departure's flag) what NodeMeta returns, or changes nothing on error.
func (d *delegate) setMeta(m Meta, dep departure) error {
	b, err := encodeWire(m, dep)
	if err != nil {
		return err
	}
	d.metaMu.Lock()
	d.meta, d.depart, d.wire = m, dep, b
	d.metaMu.Unlock()
	return nil
}

// NodeMeta returns the encoded local meta for memberlist's alive messages.
func (d *delegate) NodeMeta(limit int) []byte {
	d.metaMu.Lock()
	defer d.metaMu.Unlock()
	if len(d.wire) > limit { // encodeWire keeps it ≤ MetaMaxSize, memberlist's limit; memberlist panics on more
		d.logger.Error("local meta over memberlist's limit; gossiping none", "size", len(d.wire), "limit", limit)
		return nil
	}
	return slices.Clone(d.wire)
}

// NotifyMsg, GetBroadcasts, LocalState and MergeRemoteState: pregate gossips nothing but node meta.
func (d *delegate) NotifyMsg([]byte)                  {}
func (d *delegate) GetBroadcasts(_, _ int) [][]byte   { return nil }
func (d *delegate) LocalState(bool) []byte            { return nil }
func (d *delegate) MergeRemoteState(_ []byte, _ bool) {}
func (d *delegate) NotifyJoin(n *memberlist.Node)     { d.notify(EventJoin, n) }
func (d *delegate) NotifyLeave(n *memberlist.Node)    { d.notify(EventLeave, n) }
func (d *delegate) NotifyUpdate(n *memberlist.Node)   { d.notify(EventUpdate, n) }

// notify copies n (memberlist holds its node lock now, so reading n is race-free; it must not be
// kept), records it in the view, and queues the event.
//
// n.State is no help: memberlist v0.7.0 keeps a node's state in a field that shadows Node.State,
// which stays StateAlive. A leave is StateLeft when the node's last meta carried the leaving flag
// (Member.Leave gossips it, and waits, before memberlist's leave), StateStopped when it carried the
// stopping flag (Member.Stop), StateDead otherwise.
func (d *delegate) notify(t EventType, n *memberlist.Node) {
	node := Node{Name: n.Name, Addr: n.Address(), State: StateAlive}
	prev, known := d.view.get(n.Name)
	w, err := decodeWire(n.Meta)
	if err != nil {
		w.Meta = prev.Meta // the last good one, if any
		d.logger.Warn("node gossips unreadable meta", "peer", n.Name, "addr", node.Addr, "err", err)
	}
	node.Meta = w.Meta
	if t == EventLeave {
		node.State = StateDead
		switch {
		case w.Leaving:
			node.State = StateLeft
		case w.Stopping:
			node.State = StateStopped
		}
	}
	d.view.set(node, time.Now())
	if t == EventUpdate && known && prev == node {
		return // only the departure flag changed; the leave itself follows
	}
	if t == EventUpdate {
		d.logger.Debug("node updated", "peer", node.Name, "meta", node.Meta)
	} else {
		d.logger.Info("node "+t.String(), "peer", node.Name, "addr", node.Addr, "state", node.State, "role", node.Meta.Role)
	}
	d.queue.push(Event{Type: t, Node: node})
}

// forgetAfter is how long the view keeps a dead or left node. memberlist itself forgets them after
// GossipToTheDeadTime (30 s); keeping them longer lets Members answer "s3 died" to a caller that
// missed the event, and bounding it keeps a long-lived cluster with churning names from growing
// the view without limit.
const forgetAfter = time.Hour

// view is every node this Member has heard of, from memberlist's events.
type view struct {
	mu    sync.Mutex
	nodes map[string]viewEntry
}

type viewEntry struct {
	node  Node
	since time.Time // of the last state change
}

func (v *view) set(n Node, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.nodes == nil {
		v.nodes = make(map[string]viewEntry)
	}
	since := now
	if old, ok := v.nodes[n.Name]; ok && old.node.State == n.State {
		since = old.since
	}
	v.nodes[n.Name] = viewEntry{node: n, since: since}
	for name, e := range v.nodes {
		if e.expired(now) {
			delete(v.nodes, name)
		}
	}
}

func (e viewEntry) expired(now time.Time) bool {
	return e.node.State != StateAlive && now.Sub(e.since) > forgetAfter
}

func (v *view) get(name string) (Node, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	e, ok := v.nodes[name]
	return e.node, ok
}

// list returns the nodes keep accepts, sorted by name.
func (v *view) list(keep func(Node) bool) []Node {
	now := time.Now()
	v.mu.Lock()
	out := make([]Node, 0, len(v.nodes))
	for _, e := range v.nodes {
		if !e.expired(now) && keep(e.node) {
			out = append(out, e.node)
		}
	}
	v.mu.Unlock()
	slices.SortFunc(out, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// queueMax bounds the hand-off between the callbacks and the pump. The pump never blocks (it drops
// the oldest event from a full Events channel), so this only ever holds what arrived since it last
// woke; the bound is a backstop, its drops counted with the rest.
const queueMax = 4096

// eventQueue hands events from memberlist's callbacks to the pump without blocking either.
type eventQueue struct {
	mu      sync.Mutex
	buf     []Event
	closed  bool
	wake    chan struct{} // capacity 1: "something to do"
	dropped *atomic.Uint64
}

func (q *eventQueue) push(ev Event) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	if len(q.buf) >= queueMax {
		q.buf = q.buf[1:]
		q.dropped.Add(1)
	}
	q.buf = append(q.buf, ev)
	q.mu.Unlock()
	q.signal()
}

func (q *eventQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default: // already signalled
	}
}

// close makes push a no-op and wakes the pump to drain and exit.
func (q *eventQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.signal()
}

// take returns the queued events and whether the queue is closed.
func (q *eventQueue) take() ([]Event, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	b := q.buf
	q.buf = nil
	return b, q.closed
}
