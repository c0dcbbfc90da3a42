package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pregate/pregate/bench"
	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/worker"
)

// The default GEMV shapes: Switch-Base's expert matrices (f32) and Mixtral 8x7B's (bf16).
const defaultGEMVShapes = "3072x768:f32,768x3072:f32,14336x4096:bf16,4096x14336:bf16"

// newBenchDeviceCmd is `pregate bench device`: expert GEMV bytes/s and pinned host-to-device copy
// bytes/s on --device (scripts/gpu-check.sh sets them against the GPU's memory bandwidth and torch).
func newBenchDeviceCmd() *cobra.Command {
	var (
		device, shapes, output string
		copyBytes              = byteSize(128 << 20)
		threads, rounds        int
		minSeconds             float64
	)
	cmd := &cobra.Command{
		Use:   "device [--device cuda:N] [--shapes NxK:f32,...] [--copy-bytes SIZE] -o table|json",
		Short: "Expert GEMV bandwidth and pinned host-to-device copy throughput on a device",
		Long: "Multiply each --shapes weight matrix by a vector (the engine's decode GEMV, Backend.Linear with\n" +
			"one row) and report the weight bytes read per second; copy --copy-bytes from a pinned staging\n" +
			"buffer to device memory on the copy stream, 4 copies in flight as the worker's staging buffers\n" +
			"keep them, and report bytes/s. Best of --rounds rounds of at least --min-seconds each.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("-o %q: want table or json", output)
			}
			spec, err := parseDevice(device)
			if err != nil {
				return err
			}
			sh, err := bench.ParseGEMVShapes(shapes)
			if err != nil {
				return fmt.Errorf("--shapes: %w", err)
			}
			if copyBytes <= 0 {
				return fmt.Errorf("--copy-bytes %d: want positive", copyBytes)
			}
			o := bench.DeviceOptions{Shapes: sh, CopyBytes: int64(copyBytes), MinSeconds: minSeconds, Rounds: rounds}
			if spec.cuda {
				// The arena holds the copies in flight.
				acc, err := openAccelerator(spec.ordinal, 4*int64(copyBytes))
				if err != nil {
					return fmt.Errorf("--device %s: %w", spec, err)
				}
				defer acc.Close()
				o.Backend, o.Device = acc.Backend(), acc
			} else {
				cpu := compute.NewCPU(threads)
				defer cpu.Close()
				dev := worker.NewCPU()
				defer dev.Close()
				o.Backend, o.Device = cpu, dev
			}
			res, err := bench.RunDevice(cmd.Context(), o)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if output == "json" {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				return enc.Encode(res)
			}
			fmt.Fprintf(w, "device %s\n", res.Device)
			fmt.Fprintf(w, "%-22s %12s %12s %9s\n", "GEMV", "MB", "µs/call", "GB/s")
			for _, g := range res.GEMV {
				fmt.Fprintf(w, "%-22s %12.1f %12.2f %9.1f\n", g.Shape, float64(g.Bytes)/1e6, g.SecondsPerCall*1e6, g.BytesPerSecond/1e9)
			}
			fmt.Fprintf(w, "%-22s %12.1f %12.2f %9.1f\n", "h2d pinned copy", float64(res.Copy.Bytes)/1e6, res.Copy.SecondsPerCopy*1e6, res.Copy.BytesPerSecond/1e9)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&device, "device", "cpu", deviceFlagUsage)
	f.StringVar(&shapes, "shapes", defaultGEMVShapes, "weight matrices NxK:dtype (f32 or bf16), comma-separated")
	f.Var(&copyBytes, "copy-bytes", "bytes per host-to-device copy")
	f.IntVar(&threads, "threads", 0, "compute threads of the cpu device (0: all cores)")
	f.IntVar(&rounds, "rounds", 3, "rounds per measurement (the best is reported)")
	f.Float64Var(&minSeconds, "min-seconds", 0.2, "each round runs at least this long")
	f.StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}
