package placement

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/pregate/pregate/routing"
)

// Event is one change to a placement of a watched model.
type Event struct {
	Key       string            // the full etcd key
	Expert    routing.ExpertKey // the expert, when Dense is ""
	Dense     string            // the dense blob's name, for a dense placement
	Placement *Placement        // the new value; nil when the key was deleted
	Revision  int64             // the change's revision: after a put the key's ModRevision, for the next Change
}

// WatchPlacements streams the changes to model's placements (experts and dense blobs) from
// fromRevision on (0: from now; after Placements, pass its revision + 1 to miss nothing). Events
// come in revision order. The channel is closed when ctx ends, and also when the watch fails:
// its revision was compacted away, the member lost its leader, or a value did not decode. Either
// way a caller whose ctx is still live re-lists (Placements) and watches again from the new
// revision. The goroutine feeding the channel stops when the channel closes; the caller owns it
// through ctx and must drain or cancel.
func (s *Store) WatchPlacements(ctx context.Context, model string, fromRevision int64) <-chan Event {
	out := make(chan Event)
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if fromRevision > 0 {
		opts = append(opts, clientv3.WithRev(fromRevision))
	}
	// The model's prefix holds its manifest too; events on it are skipped below.
	wch := s.cli.Watch(ctx, s.modelPrefix(model), opts...)
	go func() {
		defer close(out)
		defer cancel() // ends the etcd watch when we stop early
		for wr := range wch {
			if wr.Err() != nil || wr.Canceled {
				return
			}
			for _, ev := range wr.Events {
				pk, err := s.ParseKey(string(ev.Kv.Key))
				if err != nil {
					continue // the manifest
				}
				e := Event{Key: string(ev.Kv.Key), Expert: pk.Expert, Dense: pk.Dense, Revision: ev.Kv.ModRevision}
				if ev.Type == clientv3.EventTypePut {
					var p Placement
					if err := decode(ev.Kv, &p); err != nil {
						return
					}
					e.Placement = &p
				}
				select {
				case out <- e:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out
}
