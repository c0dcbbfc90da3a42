// Package bench is `pregate bench`: measurements of a whole cluster run in this process (package
// cluster), which is why it sits above every daemon and no daemon imports it.
//
// RunModes is the Pre-gated MoE paper's comparison of fetch policies, on a real cluster (stores on
// gRPC over loopback, a worker running the fetch pipeline), once per mode on the same prompts:
//
//	checkpoint (or preset → synth; + random pre-gates for pregated) ─▶ local cluster, import
//	resident run ─▶ c (per-block compute) and the active expert bytes per block
//	link rate: --link-gbps, or a regime (paper: f ≈ 0.5c; pcie4/rdma100/tcp25 scaled by this CPU vs an A100)
//	ondemand run ─▶ f (per-block fetch: its stall)   other modes ─▶ block latency p50/p90, tokens/s, …
//	─▶ ModesResult (table, JSON) and the ideal overlap bound (c+f)/max(c,f)
//
// Every mode runs on a fresh worker whose expert cache is the least the mode needs (so that peak
// expert bytes compare the modes' memory), and only decode steps are measured. The worker has no
// benchmark code: record.go is the Tracer it is given (block latency), link.go the Link (pacing).
//
// RunFetch (`pregate bench fetch`) measures what the store → worker data path delivers on a link:
// blob Fetch throughput (data plane, with per-chunk CRC32C and the whole-blob digest check) against
// a plain TCP copy of the same bytes between the same two processes, and the gRPC fallback beside
// them.
package bench
