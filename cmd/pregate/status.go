package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/pregate/pregate/coordinator"
)

// exitUnhealthy is `pregate status`'s exit status when some blob has no ready replica (or etcd is
// unhealthy); other failures exit 1.
const exitUnhealthy = 2

func newStatusCmd() *cobra.Command {
	var (
		cf       clusterFlags
		output   string
		watch    bool
		interval time.Duration
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the cluster: stores, models, workers, replication and etcd health",
		Long: "Show the cluster's state as etcd holds it. Exits 2 when any expert or dense blob has no ready\n" +
			"replica on a live store, or etcd is unhealthy, so it works in scripts and Helm tests.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := envFallback(cmd.Flags()); err != nil {
				return err
			}
			switch output {
			case "table", "wide", "json", "yaml":
			default:
				return fmt.Errorf("-o %q: want table, wide, json or yaml", output)
			}
			ctx := cmd.Context()
			cli, ps, err := cf.connect(ctx)
			if err != nil {
				return err
			}
			defer cli.Close()
			out := cmd.OutOrStdout()
			for {
				st, err := coordinator.ReadStatus(ctx, cli, ps, coordinator.DefaultConfig().Replicas)
				if err != nil {
					if watch && ctx.Err() != nil {
						return nil
					}
					return err
				}
				if watch && isTerminal(out) {
					fmt.Fprint(out, "\033[H\033[2J") // home, clear
				}
				if err := renderStatus(out, st, output); err != nil {
					return err
				}
				if !watch {
					if st.Summary.Reason != "" {
						return &exitError{code: exitUnhealthy, err: errors.New("cluster unavailable: " + st.Summary.Reason)}
					}
					if !st.Summary.Healthy {
						return &exitError{code: exitUnhealthy, err: fmt.Errorf("cluster unhealthy: %d experts and %d dense blobs have no ready replica; etcd healthy: %v",
							st.Summary.ExpertsUnavailable, st.Summary.DenseUnavailable, st.Summary.EtcdHealthy)}
					}
					return nil
				}
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(interval):
				}
				if !isTerminal(out) && output != "json" {
					fmt.Fprintln(out, "---")
				}
			}
		},
	}
	f := cmd.Flags()
	cf.registerWithTLS(f)
	f.StringVarP(&output, "output", "o", "table", "table, wide, json or yaml")
	f.BoolVarP(&watch, "watch", "w", false, "redraw until interrupted")
	f.DurationVar(&interval, "interval", 2*time.Second, "redraw interval with --watch")
	return cmd
}

func renderStatus(w io.Writer, st *coordinator.Status, output string) error {
	switch output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	case "yaml":
		j, err := json.Marshal(st)
		if err != nil {
			return err
		}
		y, err := yaml.JSONToYAML(j)
		if err != nil {
			return err
		}
		_, err = w.Write(y)
		return err
	}
	wide := output == "wide"
	s := st.Summary
	health := s.State
	if !s.Healthy {
		health = "UNHEALTHY (" + s.State + ")"
	}
	leader := s.Leader
	if leader == "" {
		leader = "none"
	}
	etcd := "healthy"
	if !s.EtcdHealthy {
		etcd = "UNHEALTHY"
	}
	fmt.Fprintf(w, "cluster %s: %s   leader %s   R=%d   etcd %s (%d endpoints)\n", s.Cluster, health, leader, s.Replicas, etcd, len(s.Etcd))
	if s.Reason != "" {
		fmt.Fprintf(w, "reason: %s\n", s.Reason)
		return nil
	}
	fmt.Fprintf(w, "stores: %d alive, %d suspect, %d dead, %d stopped, %d left, %d draining   models: %d   workers: %d\n",
		s.StoresAlive, s.StoresSuspect, s.StoresDead, s.StoresStopped, s.StoresLeft, s.StoresDraining, s.Models, s.Workers)
	fmt.Fprintf(w, "experts: %d under-replicated, %d unavailable   dense blobs: %d under-replicated, %d unavailable   copies in flight: %d\n",
		s.ExpertsUnderReplicated, s.ExpertsUnavailable, s.DenseUnderReplicated, s.DenseUnavailable, s.CopiesInFlight)
	if wide {
		for _, e := range s.Etcd {
			state := "healthy"
			if !e.Healthy {
				state = "unhealthy: " + e.Error
			}
			fmt.Fprintf(w, "etcd %s: %s %s db %s leader=%v\n", e.Endpoint, state, e.Version, humanize.IBytes(uint64(e.DBSize)), e.IsLeader)
		}
	}

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw)
	if wide {
		fmt.Fprintln(tw, "NODE\tADDRESS\tDATA ADDRESS\tSTATE\tBLOBS\tCOPYING\tHELD\tUSED/CAPACITY\tAGE\tSINCE")
	} else {
		fmt.Fprintln(tw, "NODE\tADDRESS\tSTATE\tBLOBS\tUSED/CAPACITY\tAGE")
	}
	for _, r := range st.Stores {
		state := r.State
		if r.Draining {
			state += ",draining"
		}
		used := humanize.IBytes(uint64(r.Used)) + "/" + humanize.IBytes(uint64(r.Capacity))
		if wide {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\n", r.Name, r.Address, r.DataAddr, state, r.Blobs, r.Copying, r.Held, used,
				age(s.Time, r.Joined), age(s.Time, r.Since))
		} else {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", r.Name, r.Address, state, r.Blobs, used, age(s.Time, r.Joined))
		}
	}
	fmt.Fprintln(tw)
	if wide {
		fmt.Fprintln(tw, "NAME\tARCH\tDTYPE\tBLOCKS\tEXPERTS\tEXPERT BYTES\tDENSE\tREPLICAS\tUNDER-REPLICATED\tUNAVAILABLE\tAGE")
	} else {
		fmt.Fprintln(tw, "NAME\tARCH\tBLOCKS\tEXPERTS\tREPLICAS\tUNDER-REPLICATED")
	}
	for _, m := range st.Models {
		if wide {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%d\t%d\t%d\t%s\n", m.Name, m.Arch, m.DType, m.Blocks, m.Experts,
				humanize.IBytes(uint64(m.ExpertBytes)), humanize.IBytes(uint64(m.DenseBytes)), m.Replicas, m.UnderReplicated, m.Unavailable, age(s.Time, m.CreatedAt))
		} else {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\n", m.Name, m.Arch, m.Blocks, m.Experts, m.Replicas, m.UnderReplicated)
		}
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "WORKER\tHTTP\tMODEL\tMODE\tUPDATED")
	for _, wk := range st.Workers {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", wk.Name, wk.HTTPAddr, wk.Model, wk.Mode, age(s.Time, wk.Updated))
	}
	return tw.Flush()
}

// age formats now−t like kubectl: 45s, 3m, 5h, 2d.
func age(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", max(0, int(d.Seconds())))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return strings.TrimSpace(fmt.Sprintf("%dd", int(d.Hours()/24)))
}
