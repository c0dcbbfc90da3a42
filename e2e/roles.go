//go:build e2e

// Package e2e runs the built pregate binary as a cluster of separate hosts and injects faults
// from outside, as an operator or a broken network would: each daemon is an OS process in its own
// Linux network namespace with its own IPv4 address (198.18.0.0/15) on a bridge the harness
// creates, configured only through flags and PREGATE_* variables. Faults are SIGKILL,
// SIGSTOP/SIGCONT, a veth set down (a partition) and tc qdiscs (delay, loss, rate).
//
// The tests need root, ip(8) and tc(8), and sit behind the e2e build tag:
//
//	go test -tags e2e -count=1 -v -timeout 20m ./e2e/
//
// This file alone knows the daemons' command lines; the harness (netns_test.go, proc_test.go)
// knows nothing of pregate, and the scenarios ask roles for what they start.
package e2e

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"time"
)

// The ports every role listens on. One daemon runs per host (namespace), as in a pod, so every
// daemon may use the same fixed ports.
const (
	CoordinatorHTTPPort = 7080
	EtcdClientPort      = 2379
	GossipPort          = 7946
	StoreGRPCPort       = 7070
	StoreDataPort       = 7071
	WorkerHTTPPort      = 8000
)

// Host is what a role needs to know about the node it runs on.
type Host struct {
	Name string // node name in the cluster, e.g. store-0
	IP   string // its only address, on the test bridge
	Dir  string // its own directory, kept across restarts of its daemon
}

// Daemon is a pregate command line, its environment, and how to tell that it is up.
type Daemon struct {
	Role string   // coordinator, store, worker, import, status, … (names the log file)
	Args []string // after the binary's path
	Env  []string // PREGATE_* variables, KEY=value
	// ReadyURL answers 200 once the daemon serves; ReadyFile is written once it listens. A daemon
	// is ready when every one that is set holds.
	ReadyURL, ReadyFile string
}

// hostPort is ip:port.
func hostPort(ip string, port int) string { return net.JoinHostPort(ip, strconv.Itoa(port)) }

// CoordinatorURL is the base URL of the coordinator's HTTP API on host ip.
func CoordinatorURL(ip string) string { return "http://" + hostPort(ip, CoordinatorHTTPPort) }

// WorkerURL is the base URL of the worker's HTTP API on host ip.
func WorkerURL(ip string) string { return "http://" + hostPort(ip, WorkerHTTPPort) }

// StoreAddrs are a store's gRPC and data-plane addresses on host ip.
func StoreAddrs(ip string) (grpc, data string) {
	return hostPort(ip, StoreGRPCPort), hostPort(ip, StoreDataPort)
}

// gossipFlags are the memberlist flags of a daemon on h that joins the coordinator at coordIP
// ("" for none). memberlist advertises its bind address, so it binds h.IP, never 0.0.0.0 (which
// would make it guess an address, and it finds no private one in 198.18.0.0/15).
//
// When the daemons take --advertise-host (PREGATE_ADVERTISE_HOST) and default to the fixed ports
// above, the per-role listen flags below shrink to that one variable; this function and the three
// role functions are the only places to change.
func gossipFlags(h Host, coordIP string) []string {
	args := []string{"--gossip-addr", hostPort(h.IP, GossipPort)}
	if coordIP != "" {
		args = append(args, "--join", hostPort(coordIP, GossipPort))
	}
	return args
}

// CoordinatorOptions are the coordinator's timers and replication, short enough for tests.
type CoordinatorOptions struct {
	Replicas  int
	DeadGrace time.Duration // how long a store is dead before its blobs are copied elsewhere
	Interval  time.Duration // longest time between reconcile passes
}

// Coordinator is a coordinator with an embedded etcd in h.Dir. The embedded etcd advertises the
// client URL it listens on, so it listens on h.IP.
func Coordinator(h Host, o CoordinatorOptions) Daemon {
	return Daemon{
		Role: "coordinator",
		Args: append([]string{"coordinator",
			"--http", hostPort(h.IP, CoordinatorHTTPPort),
			"--etcd-listen", "http://" + hostPort(h.IP, EtcdClientPort),
			"--replicas", strconv.Itoa(o.Replicas),
			"--dead-grace", o.DeadGrace.String(),
			"--interval", o.Interval.String(),
		}, gossipFlags(h, "")...),
		Env:      []string{"PREGATE_NODE_NAME=" + h.Name, "PREGATE_DATA_DIR=" + filepath.Join(h.Dir, "coordinator")},
		ReadyURL: CoordinatorURL(h.IP) + "/health",
	}
}

// Store is an expert store on h that persists its blobs in h.Dir and joins the coordinator's gossip.
func Store(h Host, coordIP, memory string) Daemon {
	grpc, data := StoreAddrs(h.IP)
	ready := filepath.Join(h.Dir, "store-ready.json")
	return Daemon{
		Role: "store",
		Args: append([]string{"store", "--listen", grpc, "--data-listen", data, "--ready-file", ready},
			gossipFlags(h, coordIP)...),
		Env: []string{"PREGATE_NODE_NAME=" + h.Name, "PREGATE_DATA_DIR=" + filepath.Join(h.Dir, "store"),
			"PREGATE_MEMORY_LIMIT=" + memory},
		// TODO(advertise-host): the store's HTTP port 7072 will answer /ready; use ReadyURL then.
		ReadyFile: ready,
	}
}

// StandaloneStore is a store that joins no cluster (for the data-path measurement), holding memory bytes.
func StandaloneStore(h Host, memory string) Daemon {
	grpc, data := StoreAddrs(h.IP)
	ready := filepath.Join(h.Dir, "store-ready.json")
	return Daemon{
		Role: "store",
		Args: []string{"store", "--no-gossip", "--listen", grpc, "--data-listen", data, "--ready-file", ready,
			"--memory-limit", memory, "--max-blob", memory, "--max-inflight", memory, "--log-level", "warn"},
		Env:       []string{"PREGATE_NODE_NAME=" + h.Name},
		ReadyFile: ready,
	}
}

// WorkerOptions say what a worker serves and how.
type WorkerOptions struct {
	Model string // the model's name in the cluster
	Mode  string // resident, ondemand, prefetch-all, pregated, speculative
	Cache string // expert cache bytes, e.g. 1536KiB
	// DataDir is the worker's directory under h.Dir (one per model, so that a node can serve
	// several models one after another); empty: "worker".
	DataDir string
}

// Worker is a worker on h that finds etcd through the coordinator at coordIP and serves HTTP.
func Worker(h Host, coordIP string, o WorkerOptions) Daemon {
	dir := o.DataDir
	if dir == "" {
		dir = "worker"
	}
	return Daemon{
		Role: "worker",
		Args: append([]string{"worker", "--http", hostPort(h.IP, WorkerHTTPPort), "--model", o.Model, "--mode", o.Mode,
			"--expert-cache", o.Cache}, gossipFlags(h, coordIP)...),
		Env: []string{"PREGATE_NODE_NAME=" + h.Name, "PREGATE_DATA_DIR=" + filepath.Join(h.Dir, dir),
			"PREGATE_COORDINATOR=" + hostPort(coordIP, CoordinatorHTTPPort)},
		ReadyURL: WorkerURL(h.IP) + "/ready",
	}
}

// Import imports the checkpoint in dir as name, through the coordinator at coordIP.
func Import(coordIP, dir, name string) Daemon {
	return Daemon{Role: "import", Args: []string{"import", "--model", dir, "--name", name},
		Env: []string{"PREGATE_COORDINATOR=" + hostPort(coordIP, CoordinatorHTTPPort)}}
}

// Status prints the cluster's state as JSON (exit status 2 when something is unavailable).
func Status(coordIP string) Daemon {
	return Daemon{Role: "status", Args: []string{"status", "-o", "json"},
		Env: []string{"PREGATE_COORDINATOR=" + hostPort(coordIP, CoordinatorHTTPPort)}}
}

// String is the command line, for logs.
func (d Daemon) String() string { return fmt.Sprintf("%v pregate %v", d.Env, d.Args) }
