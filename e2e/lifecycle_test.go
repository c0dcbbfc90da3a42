//go:build e2e

package e2e

import (
	"context"
	"errors"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// copiedBytes sums what the running coordinators have had copied between stores (each counts the
// copies it made as leader).
func copiedBytes(t testing.TB, c *Cluster) float64 {
	t.Helper()
	total := 0.0
	for i, nd := range c.Coords {
		if c.CoordProcs[i].Exited() {
			continue
		}
		m, err := Scrape(context.Background(), c.CoordURL(nd)+"/metrics")
		if err != nil {
			t.Fatal(err)
		}
		total += m.Sum("pregate_coordinator_copied_bytes_total")
	}
	return total
}

// loadPhase runs a steady load on the worker at base while f runs, and returns every request.
func loadPhase(t *testing.T, base string, f func()) []Request {
	t.Helper()
	prompts := distinctPrompts(t, "mixtral-tiny", 8)
	want := Reference(t, base, "mixtral-tiny", prompts)
	load := StartLoad(base, "mixtral-tiny", prompts, want, 4)
	time.Sleep(2 * time.Second)
	f()
	time.Sleep(2 * time.Second)
	return load.Stop()
}

// TestRollingRestart restarts every store, one after another, as a rolling update does: SIGTERM
// (exit 0), start again on the same data dir, wait for it to be ready and alive. No request fails
// and no byte is re-replicated.
func TestRollingRestart(t *testing.T) {
	row := Record(t, "e. rolling restart of every store (SIGTERM, same data dir) under load")
	c, w := faultCluster(t)
	rollingRestart(t, row, c, w)
}

func rollingRestart(t *testing.T, row *Row, c *Cluster, w *Node) {
	c.WaitStatus(t, 30*time.Second, "convergence", ClusterStatus.Converged)
	copied := copiedBytes(t, c)
	var longest time.Duration
	rs := loadPhase(t, WorkerURL(w.IP), func() {
		for i, nd := range c.Stores {
			began := time.Now()
			if err := c.StoreProcs[i].Term(30 * time.Second); err != nil {
				t.Errorf("%s: SIGTERM: %v (want exit 0)", nd.Name, err)
			}
			c.WaitStatus(t, 20*time.Second, nd.Name+" stopped", func(s ClusterStatus) bool { return s.StoreState(nd.Name) == "stopped" })
			c.RestartStore(t, i)
			c.WaitStatus(t, 30*time.Second, nd.Name+" alive again", func(s ClusterStatus) bool {
				return s.StoreState(nd.Name) == "alive" && s.Converged()
			})
			longest = max(longest, time.Since(began))
		}
	})
	failed, p50, p99, _ := Summary(t, "rolling restart", rs)
	moved := copiedBytes(t, c) - copied
	if moved != 0 {
		t.Errorf("%.0f bytes re-replicated during the rolling restart, want 0", moved)
	}
	row.Set("stores restarted", "%d", len(c.Stores))
	row.Set("slowest restart (SIGTERM→alive)", "%s", ms(longest))
	row.Set("requests/failed", "%d/%d", len(rs), failed)
	row.Set("latency p50/p99", "%s/%s", ms(p50), ms(p99))
	row.Set("bytes re-replicated", "%.0f", moved)
}

// TestScaleOutAndDrain adds two stores to three under load, then drains them and stops them: no
// request fails, and each move copies at most 1.1× the minimum (what the new stores end up holding;
// what the drained stores held).
func TestScaleOutAndDrain(t *testing.T) {
	row := Record(t, "f. scale stores 3→5, then drain 5→3, under load")
	c, w := faultCluster(t)
	scaleOutAndDrain(t, row, c, w, []string{"store-3", "store-4"})
}

// scaleOutAndDrain adds the stores named newStores to c, then drains and stops them, under load.
func scaleOutAndDrain(t *testing.T, row *Row, c *Cluster, w *Node, newStores []string) {
	c.WaitStatus(t, 30*time.Second, "convergence", ClusterStatus.Converged)
	var outRatio, inRatio float64
	rs := loadPhase(t, WorkerURL(w.IP), func() {
		copied := copiedBytes(t, c)
		for _, name := range newStores {
			c.AddStore(t, name)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, p := range c.StoreProcs[3:] {
			if err := p.WaitReady(ctx); err != nil {
				t.Fatal(err)
			}
		}
		s := c.WaitStatus(t, 60*time.Second, "scale-out converged", func(s ClusterStatus) bool {
			return s.Summary.StoresAlive == 5 && s.Converged() && s.StoreUsed(newStores[0]) > 0 && s.StoreUsed(newStores[1]) > 0
		})
		minimum := float64(s.StoreUsed(newStores[0]) + s.StoreUsed(newStores[1]))
		moved := copiedBytes(t, c) - copied
		outRatio = moved / minimum
		row.Set("3→5 moved/minimum", "%.0f/%.0f B (%.3f×)", moved, minimum, outRatio)

		copied = copiedBytes(t, c)
		minimum = float64(s.StoreUsed(newStores[0]) + s.StoreUsed(newStores[1]))
		if out, err := c.Client.Run(ctx, c.tool(Drain(c.CoordIPs(), false, newStores...), "admin")); err != nil {
			t.Fatalf("drain: %v: %s", err, out)
		}
		c.WaitStatus(t, 60*time.Second, "drained", func(s ClusterStatus) bool {
			return s.Converged() && s.StoreUsed(newStores[0]) == 0 && s.StoreUsed(newStores[1]) == 0
		})
		moved = copiedBytes(t, c) - copied
		inRatio = moved / minimum
		row.Set("5→3 moved/minimum", "%.0f/%.0f B (%.3f×)", moved, minimum, inRatio)
		for _, p := range c.StoreProcs[3:] {
			if err := p.Term(30 * time.Second); err != nil {
				t.Errorf("stopping a drained store: %v", err)
			}
		}
		// A drained store that stopped is removed from the cluster, not waited for.
		c.WaitStatus(t, 30*time.Second, "drained stores forgotten", func(s ClusterStatus) bool {
			return s.StoreState(newStores[0]) == "" && s.StoreState(newStores[1]) == "" && s.Summary.StoresAlive == 3 && s.Converged()
		})
	})
	failed, p50, p99, _ := Summary(t, "scale out and in", rs)
	row.Set("requests/failed", "%d/%d", len(rs), failed)
	row.Set("latency p50/p99", "%s/%s", ms(p50), ms(p99))
	for what, r := range map[string]float64{"scale-out": outRatio, "drain": inRatio} {
		if r > 1.1 || r == 0 {
			t.Errorf("%s moved %.3f× the minimum, want ≤ 1.1× (and > 0)", what, r)
		}
	}
}

// haCluster is three coordinators on one embedded etcd cluster, three stores and a worker.
func haCluster(t *testing.T) (*Cluster, *Node) {
	t.Helper()
	o := testCoordinator
	o.LeaderTTL = 5 * time.Second
	c := StartClusterWith(t, ClusterOptions{Stores: 3, Coordinators: 3, Coordinator: o}, "mixtral-tiny")
	w := c.Net.Node("worker-0")
	c.StartWorker(t, w, WorkerOptions{Model: "mixtral-tiny", Mode: "speculative", Cache: tinyCache})
	c.WaitStatus(t, 30*time.Second, "convergence", ClusterStatus.Converged)
	return c, w
}

// coordIndex is the index of the coordinator named name.
func coordIndex(t *testing.T, c *Cluster, name string) int {
	t.Helper()
	i := slices.IndexFunc(c.Coords, func(nd *Node) bool { return nd.Name == name })
	if i < 0 {
		t.Fatalf("no coordinator %q", name)
	}
	return i
}

// leaderNow is the name of the coordinator whose /metrics says it leads now ("" when none does),
// asking the running ones directly: finer than polling status.
func leaderNow(c *Cluster) string {
	for i, nd := range c.Coords {
		if c.CoordProcs[i].Exited() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		m, err := Scrape(ctx, c.CoordURL(nd)+"/metrics")
		cancel()
		if err == nil && m.Sum("pregate_coordinator_leader") == 1 {
			return nd.Name
		}
	}
	return ""
}

// TestKillLeaderCoordinator SIGKILLs the leader of three coordinators under load: another is
// elected within the lease TTL, no request fails, and the new leader writes placement (a store
// added then gets its share).
func TestKillLeaderCoordinator(t *testing.T) {
	row := Record(t, "g. SIGKILL the leader of three coordinators under load")
	const ttl = 5 * time.Second
	c, w := haCluster(t)
	var took time.Duration
	rs := loadPhase(t, WorkerURL(w.IP), func() {
		old := leaderNow(c)
		if old == "" {
			t.Fatal("no coordinator leads")
		}
		killed := time.Now()
		c.CoordProcs[coordIndex(t, c, old)].Kill()
		var next string
		for next = leaderNow(c); next == ""; next = leaderNow(c) {
			if time.Since(killed) > 30*time.Second {
				t.Fatal("no new leader 30 s after the old one was killed")
			}
			time.Sleep(100 * time.Millisecond)
		}
		took = time.Since(killed)
		row.Set("old → new leader", "%s → %s", old, next)
		row.Set("new leader after", "%s (lease TTL %s)", ms(took), ttl)
		c.AddStore(t, "store-3")
		c.WaitStatus(t, 60*time.Second, "the new leader places blobs on a new store", func(s ClusterStatus) bool {
			return s.Summary.Leader == next && s.Summary.StoresAlive == 4 && s.Converged() && s.StoreUsed("store-3") > 0
		})
	})
	// The leading coordinator keeps etcd's raft leadership on another member, so the kill costs no
	// etcd election (whose new raft leader would re-grant the lease in full): the lease alone
	// bounds the takeover. The second is this test's polling.
	if bound := ttl + time.Second; took > bound {
		t.Errorf("a new leader %v after the old one was killed, want within the %v lease (+1 s of polling)", took, ttl)
	}
	failed, p50, p99, _ := Summary(t, "leader killed", rs)
	row.Set("requests/failed", "%d/%d", len(rs), failed)
	row.Set("latency p50/p99", "%s/%s", ms(p50), ms(p99))
}

// TestLoseEtcdQuorum kills two of three coordinators (and with them two of the three etcd
// members): the worker keeps serving from its cached placement, a placement write fails at once
// naming the lost quorum, status says why; once they restart, the cluster is healthy again.
func TestLoseEtcdQuorum(t *testing.T) {
	row := Record(t, "h. lose the etcd quorum (two of three coordinators SIGKILLed) under load")
	c, w := haCluster(t)
	rs := loadPhase(t, WorkerURL(w.IP), func() {
		for _, i := range []int{0, 1} {
			c.CoordProcs[i].Kill()
		}
		time.Sleep(3 * time.Second) // the surviving member notices it has no leader

		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		began := time.Now()
		_, err := c.Client.Run(ctx, c.tool(Drain(c.CoordIPs(), false, "store-0"), "admin"))
		took := time.Since(began)
		if err == nil || !strings.Contains(err.Error(), "no quorum") {
			t.Errorf("a drain without a quorum: %v (want a failure naming the quorum)", err)
		}
		row.Set("write without quorum", "failed in %s", ms(took))
		if took > 10*time.Second {
			t.Errorf("the failed write took %v: want it fast", took)
		}
		began = time.Now()
		s, err := c.Status(ctx)
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatal(err)
		}
		if !strings.Contains(s.Summary.Reason, "no quorum") || s.Summary.State != "unavailable" {
			t.Errorf("status without a quorum: %+v", s.Summary)
		}
		row.Set("status without quorum", "%s in %s", s.Summary.State, ms(time.Since(began)))

		time.Sleep(5 * time.Second) // serve a while on cached placement
		if c.CoordProcs[2].Exited() {
			t.Errorf("the surviving coordinator exited: %s", c.CoordProcs[2].Tail(5))
		}
		var wg sync.WaitGroup
		for _, i := range []int{0, 1} {
			wg.Go(func() {
				nd := c.Coords[i]
				c.CoordProcs[i] = nd.Start(t, c.coordinator(nd))
			})
		}
		wg.Wait()
		back := time.Now()
		c.WaitStatus(t, 60*time.Second, "healthy again", func(s ClusterStatus) bool {
			return s.Summary.State == "healthy" && s.Converged() && s.Summary.StoresAlive == 3
		})
		row.Set("healthy again after restart", "%s", ms(time.Since(back)))
	})
	failed, p50, p99, _ := Summary(t, "quorum lost", rs)
	row.Set("requests/failed", "%d/%d", len(rs), failed)
	row.Set("latency p50/p99", "%s/%s", ms(p50), ms(p99))
}

// TestWorkerSIGTERMDrains sends SIGTERM to a worker serving streams: /ready turns 503 at once, the
// streams in flight end normally, and the process exits 0.
func TestWorkerSIGTERMDrains(t *testing.T) {
	row := Record(t, "worker SIGTERM during 16 streams (drain)")
	_, w := faultCluster(t)
	base := WorkerURL(w.IP)
	prompts := distinctPrompts(t, "mixtral-tiny", 16)
	proc := w.Procs()[len(w.Procs())-1]
	var (
		exitErr   error
		readyCode int
	)
	res := streamAll(t, base, prompts, func() {
		proc.signal(syscall.SIGTERM)
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if readyCode = httpStatus(base + "/ready"); readyCode == 503 {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
	exitErr = proc.Wait(30 * time.Second)
	failed := 0
	for i, r := range res {
		if r.err != nil || r.finish != "length" {
			failed++
			t.Errorf("stream %d: %v (finish %q)", i, r.err, r.finish)
		}
	}
	if readyCode != 503 {
		t.Errorf("/ready during the drain: %d, want 503", readyCode)
	}
	if exitErr != nil {
		t.Errorf("worker exit after SIGTERM: %v, want status 0\n%s", exitErr, proc.Tail(5))
	}
	row.Set("streams/failed", "%d/%d", len(res), failed)
	row.Set("/ready while draining", "%d", readyCode)
	row.Set("exit", "%v", errString(exitErr))
}

func errString(err error) string {
	if err == nil {
		return "0"
	}
	return err.Error()
}

// httpStatus is the status code of a GET of url (0 when it fails).
func httpStatus(url string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}
