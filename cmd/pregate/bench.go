package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/pregate/pregate/expertstore/client"
	"github.com/pregate/pregate/internal/fetchbench"
)

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "bench", Short: "Benchmarks"}
	cmd.AddCommand(newBenchFetchCmd())
	return cmd
}

func newBenchFetchCmd() *cobra.Command {
	var (
		size   = byteSize(16 << 20)
		count  int
		rounds int
		chunk  = byteSize(1 << 20)
		output string
	)
	cmd := &cobra.Command{
		Use:   "fetch [--size BYTES] [--count N] -o json",
		Short: "Blob Fetch throughput against a plain TCP copy, between this process and a store process on loopback",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "json" && output != "table" {
				return fmt.Errorf("-o %q: want json or table", output)
			}
			if count <= 0 || size <= 0 {
				return fmt.Errorf("--count %d, --size %d: want positive", count, size)
			}
			r, stop, err := spawnStore(cmd.Context(), int64(size)*int64(count)*2, int(chunk))
			if err != nil {
				return err
			}
			defer stop()
			res, err := fetchbench.Run(cmd.Context(), r, fetchbench.Options{Size: int64(size), Count: count, Rounds: rounds, MinBytes: 2 << 30})
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if output == "json" {
				return json.NewEncoder(w).Encode(res)
			}
			fmt.Fprintf(w, "METHOD        GB/s   RATIO\n")
			fmt.Fprintf(w, "tcp (raw)   %6.2f   1.00\n", res.TCPBytesPerSecond/1e9)
			fmt.Fprintf(w, "fetch       %6.2f   %.2f\n", res.FetchBytesPerSecond/1e9, res.Ratio)
			fmt.Fprintf(w, "fetch grpc  %6.2f   %.2f\n", res.GRPCBytesPerSecond/1e9, res.GRPCRatio)
			return nil
		},
	}
	f := cmd.Flags()
	f.Var(&size, "size", "bytes per blob")
	f.IntVar(&count, "count", 8, "blobs")
	f.Var(&chunk, "chunk", "the store's chunk size")
	f.IntVar(&rounds, "rounds", 3, "alternating measurement rounds (best of each is reported)")
	f.StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

// spawnStore starts `pregate store` as a child process on loopback (memory only, no gossip) and
// waits for its ready file.
func spawnStore(ctx context.Context, memory int64, chunk int) (client.Replica, func(), error) {
	exe, err := os.Executable()
	if err != nil {
		return client.Replica{}, nil, err
	}
	dir, err := os.MkdirTemp("", "pregate-bench-")
	if err != nil {
		return client.Replica{}, nil, err
	}
	ready := filepath.Join(dir, "ready.json")
	child := exec.Command(exe, "store", "--no-gossip", "--node-name", "bench-store", "--listen", "127.0.0.1:0",
		"--memory-limit", fmt.Sprint(memory), "--max-blob", fmt.Sprint(memory), "--max-inflight", fmt.Sprint(memory),
		"--chunk-size", fmt.Sprint(chunk), "--ready-file", ready, "--log-level", "warn")
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		os.RemoveAll(dir)
		return client.Replica{}, nil, err
	}
	stop := func() {
		child.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { child.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			child.Process.Kill()
			<-done
		}
		os.RemoveAll(dir)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		b, err := os.ReadFile(ready)
		if err == nil {
			var addrs map[string]string
			if err := json.Unmarshal(b, &addrs); err != nil {
				stop()
				return client.Replica{}, nil, fmt.Errorf("store ready file: %w", err)
			}
			return client.Replica{Name: addrs["node"], GRPCAddr: addrs["grpc"], DataAddr: addrs["data"]}, stop, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			stop()
			return client.Replica{}, nil, fmt.Errorf("store process did not become ready within 15s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
