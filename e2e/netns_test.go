//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Every name the harness gives the kernel starts with namePrefix and a network's 4-hex-digit id:
// the bridge pge2e-<id>-br, per node the namespace pge2e-<id>-<node> and the host's end of its
// veth pge2e-<id>-h<n> (at most 15 bytes, the kernel's limit for interface names). The id's
// owner, the test process's pid, is written to ownerDir/<id>; a sweep removes whatever belongs to
// an id whose owner is gone (a run that crashed or was killed).
const (
	namePrefix   = "pge2e-"
	ownerDir     = "/run/pge2e"
	binDirPrefix = "pge2e-bin-" // TestMain builds pregate into $TMPDIR/pge2e-bin-<pid>-<random>
)

var staleName = regexp.MustCompile(`^` + namePrefix + `([0-9a-f]{4})-`)

// Network is one test's hosts: a Linux bridge with the host's address .1 in a /24 of
// 198.18.0.0/15, and per node a network namespace joined to the bridge by a veth pair. The host
// reaches every node through the bridge; nothing is routed outside.
type Network struct {
	t      testing.TB
	id     string
	subnet string // "198.18.7." (a /24)
	bridge string
	dir    string // the test's temp dir: node dirs and process logs

	mu     sync.Mutex
	nodes  []*Node
	closed bool
}

// Node is one host: a network namespace with one address, and the processes started in it.
type Node struct {
	Host
	net  *Network
	ns   string // network namespace
	veth string // the host's end of the node's veth pair (the node's end is eth0)

	mu    sync.Mutex
	procs []*Proc
	seq   int
}

// live holds every open network, for the sweep on a signal or a near test timeout.
var live sync.Map // *Network → struct{}

// NewNetwork creates a bridge with a fresh /24 and registers its removal with t.Cleanup. It skips
// the test when this machine cannot run it (see preflight).
func NewNetwork(t testing.TB) *Network {
	t.Helper()
	if skipReason != "" {
		t.Skip("e2e: needs root and network namespaces: " + skipReason)
	}
	if buildErr != nil {
		t.Fatalf("e2e: building pregate: %v", buildErr)
	}
	n := &Network{t: t, dir: t.TempDir()} // TempDir first: its removal runs after n.Close
	t.Cleanup(n.Close)
	if err := os.MkdirAll(ownerDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for try := 0; ; try++ {
		n.id = fmt.Sprintf("%04x", rand.IntN(1<<16))
		x := rand.IntN(512) // a /24 of 198.18.0.0/15
		n.subnet = fmt.Sprintf("198.%d.%d.", 18+x/256, x%256)
		if !inUse(n.id, n.subnet) {
			break
		}
		if try == 20 {
			t.Fatal("e2e: no free network id or subnet after 20 tries")
		}
	}
	if err := os.WriteFile(filepath.Join(ownerDir, n.id), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		t.Fatal(err)
	}
	n.bridge = namePrefix + n.id + "-br"
	live.Store(n, struct{}{})
	for _, args := range [][]string{
		{"link", "add", n.bridge, "type", "bridge"},
		{"addr", "add", n.subnet + "1/24", "dev", n.bridge},
		{"link", "set", n.bridge, "up"},
	} {
		if err := ip(args...); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("e2e: network %s: bridge %s, %s0/24", n.id, n.bridge, n.subnet)
	return n
}

// inUse says whether a network id or a subnet is taken (by another run, or anything else).
func inUse(id, subnet string) bool {
	if _, err := os.Stat(filepath.Join(ownerDir, id)); err == nil {
		return true
	}
	out, _ := exec.Command("ip", "-4", "-o", "addr", "show").Output()
	routes, _ := exec.Command("ip", "-4", "route", "show").Output()
	return bytes.Contains(out, []byte(" "+subnet)) || bytes.Contains(routes, []byte(subnet))
}

// Node adds a host named name (letters, digits and dashes) with the next address of the subnet.
// It fails the test that made the network if it cannot, so call it from that test's goroutine.
func (n *Network) Node(name string) *Node {
	n.t.Helper()
	n.mu.Lock()
	idx := len(n.nodes) + 1
	if n.closed || idx > 250 {
		n.mu.Unlock()
		n.t.Fatalf("e2e: network %s: cannot add node %s", n.id, name)
	}
	nd := &Node{
		Host: Host{Name: name, IP: n.subnet + strconv.Itoa(idx+1), Dir: filepath.Join(n.dir, name)},
		net:  n,
		ns:   namePrefix + n.id + "-" + name,
		veth: fmt.Sprintf("%s%s-h%d", namePrefix, n.id, idx),
	}
	n.nodes = append(n.nodes, nd) // before creating anything: Close removes what exists
	n.mu.Unlock()

	peer := fmt.Sprintf("%s%s-p%d", namePrefix, n.id, idx)
	if err := os.MkdirAll(nd.Dir, 0o755); err != nil {
		n.t.Fatal(err)
	}
	for _, args := range [][]string{
		{"netns", "add", nd.ns},
		{"link", "add", nd.veth, "type", "veth", "peer", "name", peer},
		{"link", "set", peer, "netns", nd.ns},
		{"link", "set", nd.veth, "master", n.bridge},
		{"link", "set", nd.veth, "up"},
		{"-n", nd.ns, "link", "set", "lo", "up"},
		{"-n", nd.ns, "link", "set", peer, "name", "eth0"},
		{"-n", nd.ns, "addr", "add", nd.IP + "/24", "dev", "eth0"},
		{"-n", nd.ns, "link", "set", "eth0", "up"},
	} {
		if err := ip(args...); err != nil {
			n.t.Fatal(err)
		}
	}
	return nd
}

// Close kills every process, prints the tail of each daemon's log when the test failed, and
// removes the namespaces, veths, bridge and owner file. It is idempotent; t.Cleanup calls it.
func (n *Network) Close() {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return
	}
	n.closed = true
	nodes := n.nodes
	n.mu.Unlock()
	live.Delete(n)
	for _, nd := range nodes {
		for _, p := range nd.Procs() {
			p.Kill()
		}
	}
	if n.t.Failed() {
		for _, nd := range nodes {
			for _, p := range nd.Procs() {
				if !p.oneShot { // a failed one-shot run's error carries its tail already
					n.t.Logf("e2e: %s: last lines of %s:\n%s", p, p.LogPath(), p.Tail(40))
				}
			}
		}
	}
	n.remove(nodes)
}

// remove deletes the kernel objects without going through t (the sweep calls it too).
func (n *Network) remove(nodes []*Node) {
	for _, nd := range nodes {
		killNamespace(nd.ns)
		_ = ip("link", "del", nd.veth) // normally gone with the namespace
		_ = os.RemoveAll(filepath.Join(netnsEtc, nd.ns))
	}
	if n.bridge != "" {
		_ = ip("link", "del", n.bridge)
	}
	_ = os.Remove(filepath.Join(ownerDir, n.id))
}

// killNamespace kills whatever still runs in ns and deletes it (its end of the veth goes with it).
func killNamespace(ns string) {
	out, _ := exec.Command("ip", "netns", "pids", ns).Output()
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	_ = ip("netns", "del", ns)
}

// sweepLive removes every open network at once, without t: on a signal or a near test timeout.
// With removeDirs it also removes their directories (logs included): the process is about to exit
// without running the tests' cleanups.
func sweepLive(removeDirs bool) {
	live.Range(func(k, _ any) bool {
		n := k.(*Network)
		n.mu.Lock()
		n.closed = true
		nodes := n.nodes
		n.mu.Unlock()
		for _, nd := range nodes {
			for _, p := range nd.Procs() {
				p.Kill()
			}
		}
		n.remove(nodes)
		if removeDirs {
			_ = os.RemoveAll(filepath.Dir(n.dir)) // the test's temporary root (t.TempDir's parent)
		}
		live.Delete(n)
		return true
	})
}

// sweepStale removes the namespaces and links of networks whose owner process is gone, and the
// binary directories of test processes that are gone, and returns their names.
func sweepStale() []string {
	var removed []string
	alive := map[string]bool{}
	owned := func(id string) bool {
		if v, ok := alive[id]; ok {
			return v
		}
		b, err := os.ReadFile(filepath.Join(ownerDir, id))
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		alive[id] = err == nil && pid > 0 && syscall.Kill(pid, 0) == nil
		return alive[id]
	}
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		ns, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if m := staleName.FindStringSubmatch(ns); m != nil && !owned(m[1]) {
			killNamespace(ns)
			removed = append(removed, ns)
		}
	}
	out, _ = exec.Command("ip", "-o", "link", "show").Output()
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line) // "7: pge2e-1a2b-h1@if6: <…"
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if m := staleName.FindStringSubmatch(name); m != nil && !owned(m[1]) {
			_ = ip("link", "del", name)
			removed = append(removed, name)
		}
	}
	etcDirs, _ := os.ReadDir(netnsEtc)
	for _, e := range etcDirs {
		if m := staleName.FindStringSubmatch(e.Name()); m != nil && !owned(m[1]) {
			_ = os.RemoveAll(filepath.Join(netnsEtc, e.Name()))
			removed = append(removed, filepath.Join(netnsEtc, e.Name()))
		}
	}
	for id, ok := range alive {
		if !ok {
			_ = os.Remove(filepath.Join(ownerDir, id))
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), binDirPrefix+"*-*"))
	for _, d := range dirs {
		pidText, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(d), binDirPrefix), "-")
		if pid, err := strconv.Atoi(pidText); err == nil && syscall.Kill(pid, 0) != nil {
			_ = os.RemoveAll(d)
			removed = append(removed, d)
		}
	}
	return removed
}

// netnsEtc is where `ip netns exec` finds per-namespace files it bind-mounts over /etc (hosts).
const netnsEtc = "/etc/netns"

// SetHosts gives the node's processes an /etc/hosts of their own (`ip netns exec` mounts
// /etc/netns/<ns>/hosts over it): how names a cluster DNS would serve resolve here. Processes
// started later see it; Go's resolver rereads a changed hosts file within seconds.
func (nd *Node) SetHosts(content string) error {
	dir := filepath.Join(netnsEtc, nd.ns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "hosts"), []byte(content), 0o644)
}

// LinkDown cuts the node off the bridge (a partition from every other host and from the test).
func (nd *Node) LinkDown() error { return ip("link", "set", nd.veth, "down") }

// LinkUp heals LinkDown.
func (nd *Node) LinkUp() error { return ip("link", "set", nd.veth, "up") }

// ErrNoNetem: the kernel has no netem qdisc (CONFIG_NET_SCH_NETEM), so no delay or loss.
var ErrNoNetem = errors.New("e2e: the kernel has no netem qdisc")

// Netem shapes the node's link in both directions (the host's end of the veth shapes what the
// node receives, the node's eth0 what it sends) with a netem spec, e.g. "delay 200ms rate 10mbit"
// or "loss 5%". A spec that is only "rate R" falls back to a token bucket (tbf) where the kernel
// lacks netem; any other spec then fails with ErrNoNetem.
func (nd *Node) Netem(spec string) error {
	qdisc := append([]string{"netem"}, strings.Fields(spec)...)
	err := nd.qdisc(qdisc)
	if err == nil || !strings.Contains(err.Error(), "qdisc kind is unknown") {
		return err
	}
	f := strings.Fields(spec)
	if len(f) != 2 || f[0] != "rate" {
		return fmt.Errorf("%w: netem %s", ErrNoNetem, spec)
	}
	// A bucket of 32 KB (several packets) and a queue of at most 200 ms before drops.
	return nd.qdisc([]string{"tbf", "rate", f[1], "burst", "32kb", "latency", "200ms"})
}

func (nd *Node) qdisc(q []string) error {
	if err := tc(append([]string{"qdisc", "replace", "dev", nd.veth, "root"}, q...)...); err != nil {
		return err
	}
	if err := tc(append([]string{"-n", nd.ns, "qdisc", "replace", "dev", "eth0", "root"}, q...)...); err != nil {
		nd.ClearNetem()
		return err
	}
	return nil
}

// ClearNetem removes what Netem set.
func (nd *Node) ClearNetem() {
	_ = tc("qdisc", "del", "dev", nd.veth, "root")
	_ = tc("-n", nd.ns, "qdisc", "del", "dev", "eth0", "root")
}

// Start starts d in the node's namespace; see Proc. t fails if it cannot start.
func (nd *Node) Start(t testing.TB, d Daemon) *Proc {
	t.Helper()
	p, err := nd.start(pregateBin, d)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// StartExec is Start with another binary than pregate (the test binary, re-executed as a helper).
func (nd *Node) StartExec(t testing.TB, bin string, d Daemon) *Proc {
	t.Helper()
	p, err := nd.start(bin, d)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// StartReady is Start, then WaitReady within timeout; t fails if the daemon is not ready.
func (nd *Node) StartReady(t testing.TB, d Daemon, timeout time.Duration) *Proc {
	t.Helper()
	p := nd.Start(t, d)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := p.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return p
}

// Run runs d in the node's namespace to its end and returns its stdout; the error carries the
// exit status and the log's tail.
func (nd *Node) Run(ctx context.Context, d Daemon) ([]byte, error) {
	return nd.Exec(ctx, pregateBin, d)
}

// Exec is Run with another binary than pregate (the test binary, re-executed as a helper).
func (nd *Node) Exec(ctx context.Context, bin string, d Daemon) ([]byte, error) {
	var stdout bytes.Buffer
	p, err := nd.startTo(bin, d, &stdout)
	if err != nil {
		return nil, err
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		p.Kill()
	}
	if p.err != nil {
		return stdout.Bytes(), fmt.Errorf("%s: %w\n%s", p, p.err, p.Tail(20))
	}
	return stdout.Bytes(), nil
}

// Procs are the processes started on the node, oldest first.
func (nd *Node) Procs() []*Proc {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return append([]*Proc(nil), nd.procs...)
}

func ip(args ...string) error { return run("ip", args...) }
func tc(args ...string) error { return run("tc", args...) }

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}
