package membership

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

const (
	// updateTimeout bounds UpdateMeta's wait for memberlist to finish gossiping the new meta (a few
	// gossip rounds: well under a second with the default timers on a LAN).
	updateTimeout = 5 * time.Second
	// closeLeaveTimeout bounds Close's graceful leave; past it the others detect the node as dead
	// instead of left, which is harmless.
	closeLeaveTimeout = 2 * time.Second
	// joinRetryInterval is the wait between two join attempts (Config.JoinRetry).
	joinRetryInterval = time.Second
)

// Member is this node's membership in the cluster. Its methods are safe for concurrent use.
type Member struct {
	spread  time.Duration // gossip rounds for an update to reach every node (leaveLocked)
	name    string
	addr    string
	logger  *slog.Logger
	ml      *memberlist.Memberlist
	d       *delegate
	events  chan Event
	dropped atomic.Uint64
	pumpWG  sync.WaitGroup

	stop chan struct{}  // closed by shutdown: ends the reconnect and key-reload loops
	bg   sync.WaitGroup // those loops

	updateMu sync.Mutex // serialises UpdateMeta so metas are gossiped in call order

	// lifeMu guards left and closed. Join and UpdateMeta hold it shared while they use memberlist,
	// Leave and Close exclusively: memberlist panics on Leave after Shutdown, and an update after
	// Shutdown would wait out its timeout.
	lifeMu sync.RWMutex
	left   bool
	closed bool

	closeOnce sync.Once
	closeErr  error
}

// New starts a Member: it binds the gossip ports, starts the event pump, and joins cfg.Join. If
// Join is non-empty and no seed can be reached, it shuts everything down again and returns an
// error wrapping ErrJoin that names the seeds. If cfg.Meta.Epoch is 0 it is set to the current
// time in unix milliseconds.
func New(cfg Config) (*Member, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.KeyFile != "" {
		keys, err := LoadKeys(cfg.KeyFile)
		if err != nil {
			return nil, err
		}
		if cfg.keyring, err = memberlist.NewKeyring(keys, keys[0]); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrBadKey, cfg.KeyFile, err)
		}
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("node", cfg.NodeName)
	meta := cfg.Meta
	if meta.Epoch == 0 {
		meta.Epoch = uint64(time.Now().UnixMilli())
	}
	m := &Member{
		spread: 5 * or(cfg.GossipInterval, defaultGossipInterval),
		name:   cfg.NodeName,
		logger: logger,
		events: make(chan Event, or(cfg.EventBuffer, defaultEventBuffer)),
		d:      &delegate{logger: logger},
	}
	if err := m.d.setMeta(meta, staying); err != nil {
		return nil, err
	}
	m.d.queue.wake = make(chan struct{}, 1)
	m.d.queue.dropped = &m.dropped

	ml, err := memberlist.Create(cfg.memberlistConfig(m.d, logger))
	if err != nil {
		return nil, fmt.Errorf("membership: start memberlist on %s:%d: %w", or(cfg.BindAddr, defaultBindAddr), cfg.BindPort, err)
	}
	m.ml = ml
	// Create announced this node alive, which reported it to the view synchronously.
	self, ok := m.d.view.get(cfg.NodeName)
	if !ok { // memberlist always notifies the local join in Create
		_ = ml.Shutdown()
		return nil, fmt.Errorf("membership: memberlist did not report the local node %q", cfg.NodeName)
	}
	m.addr = self.Addr

	m.pumpWG.Add(1)
	go m.pump()
	m.stop = make(chan struct{})

	if len(cfg.Join) > 0 {
		if err := m.joinRetrying(cfg.Join, cfg.JoinRetry); err != nil {
			_ = m.shutdown(staying) // memberlist's Shutdown never fails; the join error is the news
			return nil, err
		}
	}
	if every := or(cfg.ReconnectInterval, defaultReconnect); every > 0 {
		m.bg.Add(1)
		go m.reconnect(every)
	}
	if cfg.KeyFile != "" {
		m.bg.Add(1)
		go m.reloadKeys(cfg.KeyFile, or(cfg.KeyReload, defaultKeyReload), cfg.keyring)
	}
	logger.Info("membership started", "addr", m.addr, "role", meta.Role, "seeds", cfg.Join, "encrypted", len(cfg.SecretKey) > 0 || cfg.KeyFile != "")
	return m, nil
}

// pump is the only sender on m.events: it forwards queued events, dropping the oldest buffered one
// when the channel is full, and closes the channel once the queue is closed and drained. It is
// owned by the Member and waited for by Close.
func (m *Member) pump() {
	defer m.pumpWG.Done()
	defer close(m.events)
	for range m.d.queue.wake {
		evs, closed := m.d.queue.take()
		for _, ev := range evs {
			m.deliver(ev)
		}
		if closed {
			// push is a no-op once closed, so take has returned everything.
			return
		}
	}
}

func (m *Member) deliver(ev Event) {
	for {
		select {
		case m.events <- ev:
			return
		default:
		}
		select {
		case <-m.events: // drop the oldest to make room
			m.dropped.Add(1)
		default: // a reader made room meanwhile
		}
	}
}

// Join contacts addrs (host:port) and merges state with them; it returns how many answered. The
// error wraps ErrJoin and names every address that failed when none answered.
func (m *Member) Join(addrs []string) (int, error) {
	m.lifeMu.RLock()
	defer m.lifeMu.RUnlock()
	switch {
	case m.closed:
		return 0, ErrClosed
	case m.left:
		return 0, fmt.Errorf("%w: cannot join", ErrLeft)
	case len(addrs) == 0:
		return 0, nil
	}
	n, err := m.ml.Join(addrs)
	if err != nil {
		return n, fmt.Errorf("%w: no seed of %v reachable: %s", ErrJoin, addrs, flatten(err))
	}
	m.logger.Debug("joined", "seeds", addrs, "answered", n)
	return n, nil
}

// joinRetrying joins seeds, trying again every joinRetryInterval for up to retry while none
// answers: the seeds of a cluster being deployed start in any order. memberlist resolves DNS
// names at every Join, so a name whose address changes (a pod rescheduled) is followed.
func (m *Member) joinRetrying(seeds []string, retry time.Duration) error {
	deadline := time.Now().Add(retry)
	for attempt := 1; ; attempt++ {
		_, err := m.Join(seeds)
		if err == nil || !errors.Is(err, ErrJoin) || !time.Now().Add(joinRetryInterval).Before(deadline) {
			if err != nil && attempt > 1 {
				return fmt.Errorf("%w (gave up after %d attempts in %v)", err, attempt, retry)
			}
			return err
		}
		if attempt == 1 {
			m.logger.Warn("no gossip seed answers yet; retrying", "seeds", seeds, "for", retry, "err", err)
		}
		time.Sleep(joinRetryInterval)
	}
}

// reconnect tries, every interval, to join one node this Member holds dead or stopped, picked at
// random, as Serf's reconnector does: after a partition heals, each side holds the other dead and
// memberlist stops gossiping to dead nodes after GossipToTheDeadTime, so without this the two
// halves would never merge again. A node that answers refutes its death, and push/pull merges both
// views. Stopped nodes too: a store restarted after a graceful stop comes back with an incarnation
// below the one it left with, so its own alive messages are ignored until its refutation reaches
// every node — gossip, with few retransmissions, can miss one (the fault suite saw a coordinator
// hold a restarted store "stopped" for 30 s, until the next full push/pull).
func (m *Member) reconnect(interval time.Duration) {
	m.every(interval, m.reconnectOnce)
}

// every calls f every interval until the Member shuts down (then it marks m.bg done).
func (m *Member) every(interval time.Duration, f func()) {
	defer m.bg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			f()
		}
	}
}

// reconnectOnce is one attempt of reconnect.
func (m *Member) reconnectOnce() {
	var dead []Node
	for _, n := range m.Members() {
		if (n.State == StateDead || n.State == StateStopped) && n.Name != m.name {
			dead = append(dead, n)
		}
	}
	if len(dead) == 0 {
		return
	}
	n := dead[rand.IntN(len(dead))]
	if _, err := m.Join([]string{n.Addr}); err == nil {
		m.logger.Info("reconnected to a node held dead", "peer", n.Name, "addr", n.Addr)
	}
}

// Events returns the channel of membership changes, including the local node's own (its join
// comes first). Slow readers lose the oldest events (see Dropped); Members is always current. The
// channel is closed by Close.
func (m *Member) Events() <-chan Event { return m.events }

// Dropped is how many events were discarded because the Events channel was full.
func (m *Member) Dropped() uint64 { return m.dropped.Load() }

// Members returns every node this Member knows of, itself included, sorted by name: live nodes,
// and dead or left ones for an hour after they went.
//
// StateSuspect is never reported: a suspect node stays StateAlive until memberlist declares it dead
// (with FastTimers, a few hundred milliseconds; with the defaults, seconds). memberlist v0.7.0 has
// no suspicion event, the Node.State it exposes is always alive (its real state is an unexported
// field that shadows it), and its Members returns pointers into nodes it keeps mutating under a
// lock callers cannot take, so reading them would race anyway.
func (m *Member) Members() []Node {
	return m.d.view.list(func(Node) bool { return true })
}

// Alive returns the live nodes with the given role, sorted by name (the local node included if it
// has that role).
func (m *Member) Alive(role Role) []Node {
	return m.d.view.list(func(n Node) bool { return n.State == StateAlive && n.Meta.Role == role })
}

// LocalNode returns this node, with its current meta.
func (m *Member) LocalNode() Node {
	n, _ := m.d.view.get(m.name)
	n.Meta = m.d.localMeta()
	return n
}

// UpdateMeta applies fn to a copy of the local meta, checks that the result encodes within
// MetaMaxSize, and gossips it. On an encoding error nothing changes. It blocks until memberlist has
// gossiped the update, at most a few seconds; on timeout (ErrTimeout) the new meta is in effect
// and still spreads.
func (m *Member) UpdateMeta(fn func(*Meta)) error {
	m.lifeMu.RLock()
	defer m.lifeMu.RUnlock()
	switch {
	case m.closed:
		return ErrClosed
	case m.left:
		return fmt.Errorf("%w: cannot update meta", ErrLeft)
	}
	m.updateMu.Lock()
	defer m.updateMu.Unlock()

	meta := m.d.localMeta()
	fn(&meta)
	if !meta.Role.valid() {
		return fmt.Errorf("%w: update sets role %q", ErrBadMeta, meta.Role)
	}
	if err := m.d.setMeta(meta, staying); err != nil {
		return err
	}
	if err := m.ml.UpdateNode(updateTimeout); err != nil {
		return fmt.Errorf("%w: meta update not gossiped within %v: %v", ErrTimeout, updateTimeout, err)
	}
	return nil
}

// Addr returns the gossip host:port other nodes reach this one at (the advertised address; with
// BindPort 0, the port actually bound). Pass it to another node's Join.
func (m *Member) Addr() string { return m.addr }

// Leave announces that this node is leaving: the others see EventLeave with StateLeft. It first
// gossips a leaving flag in the node's meta (so the others can tell a leave from a failure), then
// memberlist's leave, and blocks until both have been gossiped or timeout passes (ErrTimeout; the
// leave still goes out, and a node that missed it reports this one dead instead of left).
// timeout <= 0 means 2 s. The node keeps answering gossip until Close. Calling it again does
// nothing.
func (m *Member) Leave(timeout time.Duration) error {
	m.lifeMu.Lock()
	defer m.lifeMu.Unlock()
	if m.closed {
		return ErrClosed
	}
	return m.leaveLocked(timeout, leaving)
}

func (m *Member) leaveLocked(timeout time.Duration, dep departure) error {
	if m.left {
		return nil
	}
	m.left = true
	if timeout <= 0 {
		timeout = closeLeaveTimeout
	}
	// Half the time for the flag, the rest (at least half) for the leave. memberlist treats a zero
	// timeout as "wait forever", so neither may reach zero.
	start := time.Now()
	var errs []error
	if err := m.d.setMeta(m.d.localMeta(), dep); err == nil { // cannot fail: the meta encoded before
		if err := m.ml.UpdateNode(timeout / 2); err != nil {
			errs = append(errs, fmt.Errorf("departure flag: %v", err))
		}
		// UpdateNode returns once the flag was sent to a few nodes, not once every node has it;
		// a leave that overtook it would be read as a failure (dead, not stopped: a restart then
		// re-replicates after the dead grace instead of the restart grace). The coordinators,
		// who act on it, get it over TCP (a push/pull exchange, which UDP loss cannot drop; the
		// fault suite saw a coordinator take a SIGTERMed store for dead under load), and the
		// others a few gossip rounds to spread it.
		m.pushTo(m.Alive(RoleCoordinator), timeout/2-time.Since(start))
		time.Sleep(min(m.spread, max(timeout/2-time.Since(start), 0)))
	}
	// memberlist counts the node as left even if this broadcast times out.
	if err := m.ml.Leave(max(timeout-time.Since(start), timeout/2)); err != nil {
		errs = append(errs, fmt.Errorf("leave: %v", err))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: within %v: %v", ErrTimeout, timeout, errors.Join(errs...))
	}
	if dep == stopping {
		m.logger.Info("stopped (others expect this node back)")
	} else {
		m.logger.Info("left the cluster")
	}
	return nil
}

// pushTo exchanges state with nodes over TCP (memberlist's push/pull), so that they hold this
// node's current meta, giving up after within.
func (m *Member) pushTo(nodes []Node, within time.Duration) {
	var addrs []string
	for _, n := range nodes {
		if n.Name != m.name {
			addrs = append(addrs, n.Addr)
		}
	}
	if len(addrs) == 0 || within <= 0 {
		return
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.ml.Join(addrs) //nolint:errcheck // best effort: gossip carries the meta too
	}()
	select {
	case <-done:
	case <-time.After(within):
	}
}

// Close leaves the cluster (if Leave was not called; a short, best-effort wait), shuts memberlist
// down, and waits for the event pump, which closes the Events channel. It waits for a Join or
// UpdateMeta in progress. Safe to call more than once; every call returns the first one's result.
func (m *Member) Close() error {
	return m.shutdown(leaving)
}

// Stop is Close for a node that will be back (a restart): the others see it StateStopped, not
// StateLeft, and keep what it holds placed on it for their restart grace. If Leave was called
// before, the node has left, and stays so.
func (m *Member) Stop() error {
	return m.shutdown(stopping)
}

// shutdown is Close or Stop; with staying it skips the graceful leave, so that the others detect
// the node as failed (Kill).
func (m *Member) shutdown(dep departure) error {
	m.closeOnce.Do(func() {
		close(m.stop)
		m.bg.Wait() // a reconnect in progress ends within TCPTimeout
		m.lifeMu.Lock()
		if dep != staying {
			if err := m.leaveLocked(closeLeaveTimeout, dep); err != nil {
				m.logger.Warn("graceful leave incomplete; others will see this node fail instead", "err", err)
			}
		}
		m.closed = true
		if err := m.ml.Shutdown(); err != nil {
			m.closeErr = fmt.Errorf("membership: shut down memberlist: %w", err)
		}
		m.lifeMu.Unlock()

		// memberlist may still call the delegate from goroutines it does not wait for (a probe in
		// progress, a suspicion timer); the closed queue ignores them.
		m.d.queue.close()
		m.pumpWG.Wait()
		m.logger.Info("membership closed")
	})
	return m.closeErr
}

// Kill stops the node without leaving, as a crash would: others see it dead, not left.
func (m *Member) Kill() error { return m.shutdown(staying) }

// flatten renders memberlist's join error, a go-multierror listing each seed and why ("failed to
// join 127.0.0.1:7946: …") over several lines, as one line.
func flatten(err error) string {
	me, ok := err.(interface{ WrappedErrors() []error })
	if !ok {
		return err.Error()
	}
	var parts []string
	for _, e := range me.WrappedErrors() {
		parts = append(parts, e.Error())
	}
	return strings.Join(parts, "; ")
}
