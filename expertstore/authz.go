package expertstore

import (
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/pregate/pregate/api/storepb"
	"github.com/pregate/pregate/internal/tlsutil"
)

// dataFetch names the data plane's read (OpFetch, and OpRaw, the benchmark's baseline) in the
// store's policy.
const dataFetch = "dataplane/fetch"

// policy is what each role may ask of a store when it runs with TLS (docs/SECURITY.md):
//   - writes (Put, Delete, Copy) come only from the coordinator, which places blobs, and Put
//     also from the importer; a Copy's sources must present store certificates (the client
//     checks that when it dials them);
//   - workers read: Fetch, Has, Stats;
//   - stores read each other's blobs (a Copy's fetch);
//   - admin (the operator's tools) may look (List, Has, Stats) but not read weights;
//   - health checks are open to every role.
//
// Anything not named here is refused to every role.
var policy = func() tlsutil.Policy {
	const (
		co, st, wk, im, ad = tlsutil.RoleCoordinator, tlsutil.RoleStore, tlsutil.RoleWorker, tlsutil.RoleImporter, tlsutil.RoleAdmin
	)
	readers := []string{co, st, wk, im}
	all := []string{co, st, wk, im, ad}
	return tlsutil.Policy{
		storepb.ExpertStore_Put_FullMethodName:    {co, im},
		storepb.ExpertStore_Delete_FullMethodName: {co},
		storepb.ExpertStore_Copy_FullMethodName:   {co},
		storepb.ExpertStore_List_FullMethodName:   {co, ad},
		storepb.ExpertStore_Has_FullMethodName:    {co, wk, im, ad},
		storepb.ExpertStore_Stats_FullMethodName:  all,
		storepb.ExpertStore_Fetch_FullMethodName:  readers,
		dataFetch:                                 readers,
		healthpb.Health_Check_FullMethodName:      all,
		healthpb.Health_Watch_FullMethodName:      all,
	}
}()
