package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pregate/pregate/internal/placement"
	"github.com/pregate/pregate/routing"
)

// Status is the cluster as `pregate status` shows it, read from etcd alone. Its JSON form is a
// stable interface (scripts, Helm tests): fields are only ever added.
type Status struct {
	Summary Summary        `json:"summary"`
	Stores  []StoreStatus  `json:"stores"`
	Models  []ModelStatus  `json:"models"`
	Workers []WorkerStatus `json:"workers"`
}

// Summary is the one-screen view.
type Summary struct {
	Cluster        string `json:"cluster"`
	Leader         string `json:"leader"` // the leader coordinator's name, "" when none
	LeaderHTTPAddr string `json:"leader_http_addr,omitempty"`
	Replicas       int    `json:"replicas"` // the cluster's R
	Models         int    `json:"models"`
	StoresAlive    int    `json:"stores_alive"`
	StoresSuspect  int    `json:"stores_suspect"`
	StoresDead     int    `json:"stores_dead"`
	StoresLeft     int    `json:"stores_left"`
	StoresStopped  int    `json:"stores_stopped"`
	StoresDraining int    `json:"stores_draining"`
	Workers        int    `json:"workers"`
	// Experts (expert blobs, over all models) with fewer ready replicas on alive stores than
	// min(R, alive stores that take blobs), and with none at all; dense blobs likewise.
	ExpertsUnderReplicated int          `json:"experts_under_replicated"`
	ExpertsUnavailable     int          `json:"experts_unavailable"`
	DenseUnderReplicated   int          `json:"dense_under_replicated"`
	DenseUnavailable       int          `json:"dense_unavailable"`
	CopiesInFlight         int          `json:"copies_in_flight"`
	Etcd                   []EtcdMember `json:"etcd"`
	EtcdHealthy            bool         `json:"etcd_healthy"`
	// Healthy: etcd healthy and every blob has a ready replica on a live store. `pregate status`
	// exits non-zero when it is false.
	Healthy bool `json:"healthy"`
	// State says the same in one word: StateHealthy, StateDegraded (every blob served, some with
	// fewer replicas than wanted) or StateUnavailable (Healthy is false).
	State string `json:"state"`
	// Reason says why the cluster is unavailable when status could not even read it (etcd has no
	// quorum); "" otherwise.
	Reason string    `json:"reason,omitempty"`
	Time   time.Time `json:"time"`
}

// Cluster states, as Summary.State reports them.
const (
	StateHealthy     = "healthy"
	StateDegraded    = "degraded"
	StateUnavailable = "unavailable"
)

// EtcdMember is the health of one etcd endpoint.
type EtcdMember struct {
	Endpoint string `json:"endpoint"`
	Healthy  bool   `json:"healthy"`
	Version  string `json:"version,omitempty"`
	DBSize   int64  `json:"db_size_bytes,omitempty"`
	IsLeader bool   `json:"is_leader"`
	Error    string `json:"error,omitempty"`
}

// StoreStatus is one row of the stores table.
type StoreStatus struct {
	Name     string    `json:"name"`
	Address  string    `json:"address"` // gRPC
	DataAddr string    `json:"data_address"`
	State    string    `json:"state"` // alive, suspect, dead, stopped, left
	Draining bool      `json:"draining"`
	Blobs    int       `json:"blobs"`    // ready replicas placement puts here
	Copying  int       `json:"copying"`  // replicas being copied here
	Held     int64     `json:"held"`     // blobs the store itself reports holding
	Used     int64     `json:"used"`     // bytes
	Capacity int64     `json:"capacity"` // bytes
	Joined   time.Time `json:"joined"`
	Since    time.Time `json:"since"`
	Updated  time.Time `json:"updated"`
}

// ModelStatus is one row of the models table.
type ModelStatus struct {
	Name            string    `json:"name"`
	Arch            string    `json:"arch"`
	DType           string    `json:"dtype"`
	Blocks          int       `json:"blocks"`
	Experts         int       `json:"experts"`
	ExpertBytes     int64     `json:"expert_bytes"`
	DenseBlobs      int       `json:"dense_blobs"`
	DenseBytes      int64     `json:"dense_bytes"`
	Replicas        int       `json:"replicas"` // wanted now: min(R, stores that take blobs)
	UnderReplicated int       `json:"under_replicated"`
	Unavailable     int       `json:"unavailable"`
	CreatedAt       time.Time `json:"created_at"`
}

// WorkerStatus is one row of the workers table.
type WorkerStatus struct {
	Name     string    `json:"name"`
	HTTPAddr string    `json:"http_addr"`
	Model    string    `json:"model"`
	Mode     string    `json:"mode"`
	Updated  time.Time `json:"updated"`
}

// ReadStatus reads the cluster's status from etcd. defaultReplicas is used when no coordinator
// has published the cluster's R yet. An etcd that cannot be read is an error; an unhealthy
// endpoint among healthy ones is only reported.
func ReadStatus(ctx context.Context, cli *clientv3.Client, ps *placement.Store, defaultReplicas int) (*Status, error) {
	st := &Status{Stores: []StoreStatus{}, Models: []ModelStatus{}, Workers: []WorkerStatus{}}
	sum := &st.Summary
	sum.Time = time.Now().UTC()
	sum.Cluster = clusterName(ps)
	sum.Etcd, sum.EtcdHealthy = etcdHealth(ctx, cli)
	if !sum.EtcdHealthy {
		// Without a quorum every read below would wait for its deadline and then fail: say why
		// instead. Workers keep serving from the placement they hold meanwhile.
		sum.State, sum.Reason = StateUnavailable, noQuorumReason(sum.Etcd)
		return st, nil
	}

	sum.Replicas = defaultReplicas
	if cc, err := ps.ClusterConfig(ctx); err == nil {
		sum.Replicas = cc.Replicas
	} else if !errors.Is(err, placement.ErrNotFound) {
		return nil, err
	}
	if v, err := ps.Leader(ctx); err == nil {
		var li LeaderInfo
		if json.Unmarshal([]byte(v), &li) == nil {
			sum.Leader, sum.LeaderHTTPAddr = li.Name, li.HTTPAddr
		}
	} else if !errors.Is(err, placement.ErrNotFound) {
		return nil, err
	}

	recs, err := ps.Stores(ctx)
	if err != nil {
		return nil, err
	}
	drains, err := ps.Drains(ctx)
	if err != nil {
		return nil, err
	}
	live := map[string]bool{}
	index := map[string]int{}
	targets := 0
	for _, r := range recs {
		s := StoreStatus{Name: r.Name, Address: r.GRPCAddr, DataAddr: r.DataAddr, State: r.State, Draining: drains[r.Name],
			Held: r.Blobs, Used: r.Used, Capacity: r.Capacity, Joined: r.Joined, Since: r.Since, Updated: r.Updated}
		switch r.State {
		case placement.StoreAlive:
			sum.StoresAlive++
		case placement.StoreSuspect:
			sum.StoresSuspect++
		case placement.StoreDead:
			sum.StoresDead++
		case placement.StoreLeft:
			sum.StoresLeft++
		case placement.StoreStopped:
			sum.StoresStopped++
		}
		if s.Draining {
			sum.StoresDraining++
		}
		// Only a store that answers serves: a suspect one (gossip has not yet declared it dead, but it
		// does not answer the coordinator) is kept in placement, yet counted here as not serving.
		if r.State == placement.StoreAlive {
			live[r.Name] = true
			if !s.Draining && r.Capacity > 0 {
				targets++
			}
		}
		index[r.Name] = len(st.Stores)
		st.Stores = append(st.Stores, s)
	}
	want := min(sum.Replicas, targets)

	names, err := ps.Models(ctx)
	if err != nil {
		return nil, err
	}
	sum.Models = len(names)
	for _, name := range names {
		m, _, err := ps.Manifest(ctx, name)
		if err != nil {
			return nil, err
		}
		ms := ModelStatus{Name: name, Arch: m.Arch, DType: m.DType, Blocks: m.Blocks, Experts: m.NumExperts(),
			DenseBlobs: len(m.Dense), Replicas: want, CreatedAt: m.CreatedAt}
		experts, _, _, err := ps.Placements(ctx, name)
		if err != nil {
			return nil, err
		}
		dense, _, _, err := ps.DensePlacements(ctx, name)
		if err != nil {
			return nil, err
		}
		count := func(p placement.Placement, found bool) (under, none bool) {
			n := 0
			if found {
				for _, r := range p.Replicas {
					i, known := index[r.Store]
					switch {
					case r.State == routing.ReplicaCopying:
						sum.CopiesInFlight++
						if known {
							st.Stores[i].Copying++
						}
					case live[r.Store]:
						n++
						st.Stores[i].Blobs++
					case known:
						st.Stores[i].Blobs++
					}
				}
			}
			return n < want, n == 0
		}
		for _, e := range m.Experts {
			ms.ExpertBytes += e.Size
			p, ok := experts[e.ExpertKey]
			under, none := count(p, ok)
			if under {
				ms.UnderReplicated++
			}
			if none {
				ms.Unavailable++
			}
		}
		for _, d := range m.Dense {
			ms.DenseBytes += d.Size
			p, ok := dense[d.Name]
			under, none := count(p, ok)
			if under {
				sum.DenseUnderReplicated++
			}
			if none {
				sum.DenseUnavailable++
			}
		}
		sum.ExpertsUnderReplicated += ms.UnderReplicated
		sum.ExpertsUnavailable += ms.Unavailable
		st.Models = append(st.Models, ms)
	}

	workers, err := ps.Workers(ctx)
	if err != nil {
		return nil, err
	}
	for _, w := range workers {
		st.Workers = append(st.Workers, WorkerStatus{Name: w.Name, HTTPAddr: w.HTTPAddr, Model: w.Model, Mode: w.Mode, Updated: w.Updated})
	}
	sum.Workers = len(st.Workers)
	sum.Healthy = sum.EtcdHealthy && sum.ExpertsUnavailable == 0 && sum.DenseUnavailable == 0
	switch {
	case !sum.Healthy:
		sum.State = StateUnavailable
	case sum.ExpertsUnderReplicated > 0 || sum.DenseUnderReplicated > 0:
		sum.State = StateDegraded
	default:
		sum.State = StateHealthy
	}
	return st, nil
}

// noQuorumReason says how many etcd members answer with a leader, and what the others said.
func noQuorumReason(ms []EtcdMember) string {
	ok := 0
	var bad []string
	for _, m := range ms {
		if m.Healthy {
			ok++
		} else {
			bad = append(bad, m.Endpoint+": "+m.Error)
		}
	}
	return fmt.Sprintf("etcd has no quorum: %d of %d endpoints answer with a leader (%s); placement cannot be read or changed, workers serve from the placement they hold",
		ok, len(ms), strings.Join(bad, "; "))
}

func clusterName(ps *placement.Store) string {
	p := ps.Prefix() // "/pregate/<cluster>/"
	return p[len("/pregate/") : len(p)-1]
}

// etcdHealth asks every endpoint for its status; etcd is healthy when a majority answers with a
// leader.
func etcdHealth(ctx context.Context, cli *clientv3.Client) ([]EtcdMember, bool) {
	eps := slices.Clone(cli.Endpoints())
	slices.Sort(eps)
	out := make([]EtcdMember, len(eps))
	healthy := 0
	for i, ep := range eps {
		out[i].Endpoint = ep
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := cli.Status(sctx, ep)
		cancel()
		switch {
		case err != nil:
			out[i].Error = err.Error()
		case resp.Leader == 0:
			out[i].Error = "no leader"
		default:
			out[i].Healthy = true
			out[i].Version = resp.Version
			out[i].DBSize = resp.DbSize
			out[i].IsLeader = resp.Leader == resp.Header.MemberId
			healthy++
		}
		if err == nil && len(resp.Errors) > 0 && out[i].Error == "" {
			out[i].Error = fmt.Sprint(resp.Errors)
		}
	}
	return out, healthy > len(eps)/2
}
