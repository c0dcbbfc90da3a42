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
