package expertstore

import (
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/pregate/pregate/api/storepb"
)

// putInitialBuffer is the most a Put allocates before its bytes arrive (it grows with them).
const putInitialBuffer = 4 << 20

// idleRecv receives a stream's messages on a goroutine of its own, so that the handler can give
// up on a peer that stops sending: gRPC's Recv takes no deadline, and a stream that sends a header
// and then nothing would otherwise hold its handler, and what it reserved, until the peer hangs up.
type idleRecv struct {
	msgs    chan recvResult
	done    chan struct{}
	timeout time.Duration
}

type recvResult struct {
	msg *storepb.PutRequest
	err error
}

func recvIdle(stream storepb.ExpertStore_PutServer, timeout time.Duration) *idleRecv {
	r := &idleRecv{msgs: make(chan recvResult), done: make(chan struct{}), timeout: timeout}
	go func() { // ends with the stream: gRPC cancels it once the handler returns
		for {
			msg, err := stream.Recv()
			select {
			case r.msgs <- recvResult{msg, err}:
			case <-r.done:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return r
}

// next returns the next message, or an error wrapping ErrTimeout once the peer has sent nothing
// for the timeout.
func (r *idleRecv) next() (*storepb.PutRequest, error) {
	t := time.NewTimer(r.timeout)
	defer t.Stop()
	select {
	case res := <-r.msgs:
		return res.msg, res.err
	case <-t.C:
		return nil, fmt.Errorf("%w: Put stream idle for %v", storepb.ErrTimeout, r.timeout)
	}
}

// stop ends the receiving goroutine: once the handler returns, gRPC cancels the stream, which
// ends a Recv in progress.
func (r *idleRecv) stop() {
	close(r.done)
}

// connLimiter caps the connections a listener keeps open, in all and per peer address: past a
// cap, a new connection is closed at once (the client tries another replica), so that one host
// cannot take every file descriptor or goroutine a store has.
type connLimiter struct {
	max, perPeer int
	mu           sync.Mutex
	total        int
	byPeer       map[string]int
}

func newConnLimiter(max, perPeer int) *connLimiter {
	return &connLimiter{max: max, perPeer: perPeer, byPeer: map[string]int{}}
}

// admit counts c in, or reports false (and counts nothing) when a cap is reached.
func (l *connLimiter) admit(c net.Conn) bool {
	peer := peerHost(c)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.max > 0 && l.total >= l.max || l.perPeer > 0 && l.byPeer[peer] >= l.perPeer {
		return false
	}
	l.total++
	l.byPeer[peer]++
	return true
}

func (l *connLimiter) release(c net.Conn) {
	peer := peerHost(c)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.byPeer[peer]--; l.byPeer[peer] <= 0 {
		delete(l.byPeer, peer)
	}
}

func peerHost(c net.Conn) string {
	host, _, err := net.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return host
}

// limitListener applies a connLimiter to a listener's connections (for gRPC, which owns its
// accept loop).
type limitListener struct {
	net.Listener
	l *connLimiter
	// refused counts connections closed at the cap.
	refused func()
}

func (ll *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := ll.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if ll.l.admit(c) {
			return &limitedConn{Conn: c, l: ll.l}, nil
		}
		ll.refused()
		c.Close()
	}
}

type limitedConn struct {
	net.Conn
	l    *connLimiter
	once sync.Once
}

func (c *limitedConn) Close() error {
	c.once.Do(func() { c.l.release(c.Conn) })
	return c.Conn.Close()
}
