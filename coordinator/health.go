package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pregate/pregate/internal/membership"
	"github.com/pregate/pregate/internal/placement"
)

// readyTimeout bounds /ready's quorum read.
const readyTimeout = 2 * time.Second

// Ready reports nil when the coordinator can do its work: etcd answers a linearizable read (one
// that needs a quorum of its members). The error says what fails.
func (c *Coordinator) Ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	// A Get without WithSerializable is linearizable: it goes through raft, so it fails without
	// a quorum even when this coordinator's own member still answers.
	if _, err := c.cli.Get(ctx, c.ps.Prefix(), clientv3.WithCountOnly()); err != nil {
		return fmt.Errorf("etcd quorum unreachable: %w", err)
	}
	return nil
}

// EtcdMembers returns the client URLs of every member of the etcd cluster (the coordinators'
// embedded members, or an external cluster's), falling back to the endpoints this coordinator
// uses when the member list cannot be read.
func (c *Coordinator) EtcdMembers(ctx context.Context) []string {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	resp, err := c.cli.MemberList(ctx)
	if err != nil {
		return c.EtcdEndpoints()
	}
	var urls []string
	for _, m := range resp.Members {
		urls = append(urls, m.ClientURLs...)
	}
	if len(urls) == 0 {
		return c.EtcdEndpoints()
	}
	slices.Sort(urls)
	return slices.Compact(urls)
}

func (c *Coordinator) healthHandlers(mux *http.ServeMux) {
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		if err := c.Err(); err != nil {
			http.Error(w, "failed: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n")) //nolint:errcheck // the client went away
	})
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
		if err := c.Ready(r.Context()); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n")) //nolint:errcheck // the client went away
	})
}

// GossipStores returns how many stores this coordinator's gossip holds alive (0 without gossip).
func (c *Coordinator) GossipStores() int {
	if c.member == nil {
		return 0
	}
	return len(c.member.Alive(membership.RoleStore))
}

// rejoinInterval is how often a coordinator that sees no store in its gossip tries the stores'
// recorded gossip addresses.
const rejoinInterval = 10 * time.Second

// rejoinFromRecords keeps this coordinator in the stores' gossip without --join: when it sees no
// live store (it restarted alone, or a partition healed on its side), it joins the gossip
// addresses the store records in etcd hold. Gossip merges what either side knows from there.
func (c *Coordinator) rejoinFromRecords(ctx context.Context) {
	for first := true; ; first = false {
		if !first {
			sleep(ctx, rejoinInterval)
		}
		if ctx.Err() != nil {
			return
		}
		if len(c.member.Alive(membership.RoleStore)) > 0 {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, readyTimeout)
		recs, err := c.ps.Stores(rctx)
		cancel()
		if err != nil {
			continue
		}
		var seeds []string
		for _, r := range recs {
			if r.GossipAddr != "" && r.State != placement.StoreLeft {
				seeds = append(seeds, r.GossipAddr)
			}
		}
		if len(seeds) == 0 {
			continue
		}
		if n, err := c.member.Join(seeds); err != nil {
			if !errors.Is(err, membership.ErrJoin) {
				return // closed or left: the coordinator is stopping
			}
			c.log.Debug("gossip rejoin through store records", "seeds", seeds, "err", err)
		} else {
			c.log.Info("joined gossip through store records", "seeds", seeds, "answered", n)
		}
	}
}

// raftHandOffInterval is how often a leading coordinator checks that its own etcd member does not
// lead etcd's raft too.
const raftHandOffInterval = 5 * time.Second

// keepRaftLeadershipAway runs while this coordinator leads, with an embedded etcd member among
// several: whenever its own member is etcd's raft leader, it moves the raft leadership to a healthy
// peer. Killing the leading coordinator then kills a raft follower only. Killing both leaders at
// once costs etcd an election first, and its new raft leader re-grants every lease in full (the
// election lease included), so the next coordinator would wait about the lease TTL plus etcd's
// election after the kill instead of the TTL alone.
func (c *Coordinator) keepRaftLeadershipAway(ctx context.Context) {
	if c.etcd == nil {
		return
	}
	for ctx.Err() == nil {
		if err := c.handOffRaftLeadership(ctx); err != nil && ctx.Err() == nil {
			c.log.Debug("raft leadership hand-off", "err", err)
		}
		sleep(ctx, raftHandOffInterval)
	}
}

func (c *Coordinator) handOffRaftLeadership(ctx context.Context) error {
	own := c.etcd.Endpoints()[0]
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	st, err := c.cli.Status(sctx, own)
	cancel()
	if err != nil || st.Leader != st.Header.MemberId {
		return err // not the raft leader (or etcd busy): nothing to do
	}
	mctx, cancel := context.WithTimeout(ctx, time.Second)
	ml, err := c.cli.MemberList(mctx)
	cancel()
	if err != nil {
		return err
	}
	for _, m := range ml.Members {
		if m.ID == st.Header.MemberId || m.IsLearner || len(m.ClientURLs) == 0 {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		peer, err := c.cli.Status(pctx, m.ClientURLs[0])
		cancel()
		if err != nil || st.RaftIndex-min(st.RaftIndex, peer.RaftIndex) > 1000 {
			continue // down, or too far behind to take over at once
		}
		tctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		_, err = c.cli.MoveLeader(tctx, m.ID)
		cancel()
		if err == nil {
			c.log.Info("moved etcd's raft leadership away from this coordinator's member", "to", m.Name)
			return nil
		}
		c.log.Debug("move raft leadership", "to", m.Name, "err", err)
	}
	return errors.New("no healthy peer member to take etcd's raft leadership")
}
