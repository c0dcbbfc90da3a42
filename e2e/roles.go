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
	"strings"
	"time"

	"github.com/pregate/pregate/internal/netaddr"
)

// The ports every role listens on: the daemons' defaults (internal/netaddr's table). One daemon
// runs per host (namespace), as in a pod, so every daemon keeps its default ports and binds
// 0.0.0.0; the roles below pass none of them.
const (
	CoordinatorHTTPPort = netaddr.CoordinatorHTTPPort
	EtcdPeerPort        = netaddr.EtcdPeerPort
	GossipPort          = netaddr.GossipPort
	StoreGRPCPort       = netaddr.StoreGRPCPort
	StoreDataPort       = netaddr.StoreDataPort
	StoreHTTPPort       = netaddr.StoreHTTPPort
	WorkerHTTPPort      = netaddr.WorkerHTTPPort
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

// StoreURL is the base URL of the store's HTTP endpoint (/health, /ready, /metrics) on host ip.
func StoreURL(ip string) string { return "http://" + hostPort(ip, StoreHTTPPort) }

// StoreAddrs are a store's gRPC and data-plane addresses on host ip.
func StoreAddrs(ip string) (grpc, data string) {
	return hostPort(ip, StoreGRPCPort), hostPort(ip, StoreDataPort)
}

// nodeEnv is what every daemon on h is told through its environment, as a pod spec would: its
// name, its data dir, and the address it advertises (the pod IP).
func nodeEnv(h Host, dir string) []string {
	return []string{"PREGATE_NODE_NAME=" + h.Name, "PREGATE_DATA_DIR=" + filepath.Join(h.Dir, dir),
		"PREGATE_ADVERTISE_HOST=" + h.IP}
}

// joinList is the gossip seeds at ips, comma-separated.
func joinList(ips []string) string {
	var out []string
	for _, ip := range ips {
		out = append(out, hostPort(ip, GossipPort))
	}
	return strings.Join(out, ",")
}

// coordinatorList is the coordinators' HTTP addresses at ips, comma-separated (PREGATE_COORDINATOR).
func coordinatorList(ips []string) string {
	var out []string
	for _, ip := range ips {
		out = append(out, hostPort(ip, CoordinatorHTTPPort))
	}
	return strings.Join(out, ",")
}

// CoordinatorOptions are the coordinator's timers and replication, short enough for tests, and its
// place among several.
type CoordinatorOptions struct {
	Replicas     int
	DeadGrace    time.Duration // how long a store is dead before its blobs are copied elsewhere
	RestartGrace time.Duration // how long a stopped store may stay away (0: the default)
	Interval     time.Duration // longest time between reconcile passes
	LeaderTTL    time.Duration // the leader lease (0: the default)
	// Peers are every coordinator of a highly available control plane (names and IPs, this one
	// included): their embedded etcd members form one cluster. Empty: a coordinator alone.
	Peers []Host
}

// Coordinator is a coordinator with an embedded etcd member in h.Dir.
func Coordinator(h Host, o CoordinatorOptions) Daemon {
	args := []string{"coordinator", "--replicas", strconv.Itoa(o.Replicas), "--dead-grace", o.DeadGrace.String(),
		"--interval", o.Interval.String()}
	if o.RestartGrace > 0 {
		args = append(args, "--restart-grace", o.RestartGrace.String())
	}
	if o.LeaderTTL > 0 {
		args = append(args, "--leader-ttl", strconv.Itoa(int(o.LeaderTTL.Seconds())))
	}
	if len(o.Peers) > 0 {
		var members, seeds []string
		for _, p := range o.Peers {
			members = append(members, p.Name+"=http://"+hostPort(p.IP, EtcdPeerPort))
			if p.IP != h.IP {
				seeds = append(seeds, p.IP)
			}
		}
		args = append(args, "--etcd-initial-cluster", strings.Join(members, ","), "--join", joinList(seeds))
	}
	return Daemon{
		Role: "coordinator",
		Args: args,
		Env:  nodeEnv(h, "coordinator"),
		// /ready needs the etcd quorum: with several coordinators, wait for it once all run.
		ReadyURL: CoordinatorURL(h.IP) + "/ready",
	}
}

// Store is an expert store on h that persists its blobs in h.Dir and joins the coordinators' gossip.
func Store(h Host, coordIPs []string, memory string) Daemon {
	return Daemon{
		Role:     "store",
		Args:     []string{"store", "--join", joinList(coordIPs)},
		Env:      append(nodeEnv(h, "store"), "PREGATE_MEMORY_LIMIT="+memory),
		ReadyURL: StoreURL(h.IP) + "/ready",
	}
}

// StandaloneStore is a store that joins no cluster (for the data-path measurement), holding memory bytes.
func StandaloneStore(h Host, memory string) Daemon {
	return Daemon{
		Role: "store",
		Args: []string{"store", "--no-gossip", "--memory-limit", memory, "--max-blob", memory, "--max-inflight", memory,
			"--log-level", "warn"},
		Env:      nodeEnv(h, "store"),
		ReadyURL: StoreURL(h.IP) + "/ready",
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

// Worker is a worker on h that finds etcd through the coordinators at coordIPs and serves HTTP.
func Worker(h Host, coordIPs []string, o WorkerOptions) Daemon {
	dir := o.DataDir
	if dir == "" {
		dir = "worker"
	}
	return Daemon{
		Role: "worker",
		Args: []string{"worker", "--model", o.Model, "--mode", o.Mode, "--expert-cache", o.Cache, "--join", joinList(coordIPs)},
		Env:  append(nodeEnv(h, dir), "PREGATE_COORDINATOR="+coordinatorList(coordIPs)),
		// The worker's /ready turns 503 once it begins to drain.
		ReadyURL: WorkerURL(h.IP) + "/ready",
	}
}

// Import imports the checkpoint in dir as name, through the coordinators at coordIPs.
func Import(coordIPs []string, dir, name string) Daemon {
	return Daemon{Role: "import", Args: []string{"import", "--model", dir, "--name", name},
		Env: []string{"PREGATE_COORDINATOR=" + coordinatorList(coordIPs)}}
}

// Status prints the cluster's state as JSON (exit status 2 when something is unavailable).
func Status(coordIPs []string) Daemon {
	return Daemon{Role: "status", Args: []string{"status", "-o", "json"},
		Env: []string{"PREGATE_COORDINATOR=" + coordinatorList(coordIPs)}}
}

// Drain marks stores to be emptied before they are stopped (undo clears the mark).
func Drain(coordIPs []string, undo bool, stores ...string) Daemon {
	args := append([]string{"drain"}, stores...)
	if undo {
		args = append(args, "--undo")
	}
	return Daemon{Role: "drain", Args: args, Env: []string{"PREGATE_COORDINATOR=" + coordinatorList(coordIPs)}}
}

// String is the command line, for logs.
func (d Daemon) String() string { return fmt.Sprintf("%v pregate %v", d.Env, d.Args) }
