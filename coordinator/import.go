package coordinator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/pregate/pregate/expertstore/blob"
	"github.com/pregate/pregate/expertstore/client"
	"github.com/pregate/pregate/internal/modelblobs"
	"github.com/pregate/pregate/internal/placement"
	"github.com/pregate/pregate/internal/tlsutil"
	"github.com/pregate/pregate/model"
	"github.com/pregate/pregate/model/tokenizer"
	"github.com/pregate/pregate/routing"
)

// ImportWriter is the Placement.Writer of the placements an import writes.
const ImportWriter = "import"

// ErrImport wraps every import failure that is not the checkpoint's own fault.
var ErrImport = errors.New("import failed")

// ImportOptions configures Import.
type ImportOptions struct {
	Dir  string // the checkpoint directory (config.json + safetensors)
	Name string // the model's name in the cluster
	// MaxDense bounds each dense blob (0: modelblobs.DefaultMaxDense).
	MaxDense int64
	// Parallel is the number of blobs uploaded at once (default 4): it bounds the memory the
	// import holds to that many blobs.
	Parallel int
	// Progress, when set, is called with the bytes handled (uploaded or found already in place)
	// and the total, from one goroutine at a time.
	Progress func(done, total int64)
	// TLS, when set, is the importer's mutual TLS towards the stores.
	TLS *tlsutil.Reloader
	// Logger receives progress lines; nil discards them.
	Logger *slog.Logger
}

// ImportReport says what Import did.
type ImportReport struct {
	Model         string        `json:"model"`
	Blobs         int           `json:"blobs"`
	Bytes         int64         `json:"bytes"`
	Replicas      int           `json:"replicas"`
	Uploaded      int           `json:"uploaded"`       // replica uploads that sent bytes
	UploadedBytes int64         `json:"uploaded_bytes"` // bytes sent to stores
	InPlace       int           `json:"in_place"`       // blobs already placed with the same content
	Published     bool          `json:"published"`      // false when the cluster already had this exact model
	Seconds       float64       `json:"seconds"`
	Duration      time.Duration `json:"-"`
}

// blobPlan is one blob of an import: where it goes and what it replaces.
type blobPlan struct {
	etcdKey string
	size    int64
	digest  blob.Digest
	old     *placement.Placement
	rev     int64
	stores  []string
	// inPlace: already placed with the same digest, and a ready replica's store has the bytes.
	inPlace bool
}

// Import splits the checkpoint in opts.Dir into expert and dense blobs, uploads each to the stores
// placement assigns it (the same weighted rendezvous over the same live stores that the coordinator
// computes, so nothing moves after an import), and publishes the model's manifest last: a model
// whose import fails is never visible. Re-importing the same checkpoint sends nothing: blobs are
// content-addressed, and a blob already placed with the same digest is left where it is.
//
// The checkpoint is read twice (sizes and digests, then bytes to upload), so memory stays at
// Parallel blobs whatever the model's size.
func Import(ctx context.Context, ps *placement.Store, opts ImportOptions) (rep ImportReport, err error) {
	start := time.Now()
	defer func() { rep.Duration = time.Since(start); rep.Seconds = rep.Duration.Seconds() }()
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Name == "" {
		return rep, fmt.Errorf("%w: no model name", ErrImport)
	}
	rep.Model = opts.Name
	if opts.Parallel <= 0 {
		opts.Parallel = 4
	}
	ckpt, err := model.OpenCheckpoint(opts.Dir)
	if err != nil {
		return rep, err
	}
	defer ckpt.Close()
	if err := ckpt.Validate(); err != nil {
		return rep, err
	}

	// Pass 1: every blob's key, size and digest, and the manifest.
	man := placement.Manifest{Name: opts.Name, Arch: ckpt.Config().ModelType, CreatedAt: time.Now().UTC()}
	raw, err := os.ReadFile(filepath.Join(opts.Dir, "config.json"))
	if err != nil {
		return rep, fmt.Errorf("%w: %w", model.ErrConfig, err)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		return rep, fmt.Errorf("%w: %s: %w", model.ErrConfig, filepath.Join(opts.Dir, "config.json"), err)
	}
	man.Config = compact.Bytes()
	if err := importTokenizer(&man, opts.Dir, ckpt.Config(), log); err != nil {
		return rep, err
	}
	layout := model.MoELayout(ckpt.Config())
	man.Blocks = len(layout)
	for _, l := range layout {
		man.ExpertsPerBlock = append(man.ExpertsPerBlock, len(l.Experts))
		if man.DType == "" && len(l.Experts) > 0 {
			if info, err := ckpt.Info(l.Experts[0][0]); err == nil {
				man.DType = string(info.DType)
			}
		}
	}
	var plans []*blobPlan
	err = modelblobs.Split(ckpt, opts.Name, opts.MaxDense, func(b modelblobs.Blob) error {
		p := &blobPlan{size: int64(len(b.Data)), digest: b.Digest}
		if b.Dense != "" {
			p.etcdKey = ps.DenseKey(opts.Name, b.Dense)
			man.Dense = append(man.Dense, placement.DenseEntry{Name: b.Dense, Digest: p.digest, Size: p.size})
		} else {
			p.etcdKey = ps.ExpertKey(opts.Name, b.Expert)
			man.Experts = append(man.Experts, placement.ExpertEntry{ExpertKey: b.Expert, Digest: p.digest, Size: p.size})
		}
		plans = append(plans, p)
		rep.Blobs++
		rep.Bytes += p.size
		return nil
	})
	if err != nil {
		return rep, err
	}
	if err := man.Validate(); err != nil {
		return rep, err
	}
	// Blobs go to the stores before the placements that name them: the record keeps the leader's
	// collection of unreferenced blobs away from them until the model is published (or this
	// process dies and the record expires).
	end, err := ps.BeginImport(ctx, man, 30*time.Second)
	if err != nil {
		return rep, fmt.Errorf("%w: %w", ErrImport, err)
	}
	defer end()

	cl := client.New(withTLS(client.DefaultConfig(), opts.TLS))
	defer cl.Close()
	for attempt := 1; ; attempt++ {
		var stores map[string]placement.StoreRecord
		stores, rep.Replicas, err = planImport(ctx, ps, cl, opts.Name, plans)
		if err != nil {
			return rep, err
		}
		if attempt == 1 {
			log.Info("importing", "model", opts.Name, "blobs", rep.Blobs, "bytes", rep.Bytes, "replicas", rep.Replicas, "stores", len(stores))
		}
		if err := upload(ctx, cl, ckpt, opts, plans, stores, &rep); err != nil {
			return rep, err
		}
		var changes []placement.Change
		for _, p := range plans {
			if p.inPlace {
				continue
			}
			np := placement.Placement{Digest: p.digest, Size: p.size, Writer: ImportWriter}
			if p.old != nil {
				np.Epoch = p.old.Epoch + 1
			}
			for _, s := range p.stores {
				np.Replicas = append(np.Replicas, routing.Replica{Store: s, State: routing.ReplicaReady})
			}
			changes = append(changes, placement.Change{Key: p.etcdKey, Placement: &np, ModRevision: p.rev})
		}
		old, _, err := ps.Manifest(ctx, opts.Name)
		if err == nil && len(changes) == 0 && sameContent(old, man) {
			log.Info("already imported; nothing changed", "model", opts.Name)
			return rep, nil
		}
		if err != nil && !errors.Is(err, placement.ErrNotFound) {
			return rep, err
		}
		err = ps.PublishModel(ctx, man, changes)
		if errors.Is(err, placement.ErrConflict) && attempt < 5 {
			log.Info("placement changed while importing; retrying", "attempt", attempt)
			rep.InPlace, rep.Uploaded, rep.UploadedBytes = 0, 0, 0
			continue
		}
		if err != nil {
			return rep, fmt.Errorf("%w: publish %q: %w", ErrImport, opts.Name, err)
		}
		rep.Published = true
		log.Info("published", "model", opts.Name, "blobs", rep.Blobs, "uploaded_bytes", rep.UploadedBytes)
		return rep, nil
	}
}

// importTokenizer checks the checkpoint's tokenizer, if it has one, and names it and its chat
// template in man (its files are split into a blob with the rest). Every id it can produce must be
// a token of the model. A tokenizer of a kind model/tokenizer does not implement is left out (the
// model is served by token ids), a broken one fails the import.
func importTokenizer(man *placement.Manifest, dir string, cfg *model.Config, log *slog.Logger) error {
	tok, err := tokenizer.Load(dir)
	if errors.Is(err, tokenizer.ErrNoTokenizer) {
		return nil
	}
	if errors.Is(err, tokenizer.ErrUnsupported) {
		log.Warn("the checkpoint's tokenizer is not supported: importing without it (prompts will be token ids)", "err", err)
		return nil
	}
	if err != nil {
		return err
	}
	vocab := 0
	switch {
	case cfg.Switch != nil:
		vocab = cfg.Switch.VocabSize
	case cfg.Mixtral != nil:
		vocab = cfg.Mixtral.VocabSize
	}
	if tok.VocabSize() > vocab {
		return fmt.Errorf("%w: %s has %d ids, more than the model's vocab_size %d", tokenizer.ErrTokenizer, tok.Source(), tok.VocabSize(), vocab)
	}
	man.Tokenizer, man.ChatTemplate = filepath.Base(tok.Source()), tok.ChatTemplate()
	return nil
}

// sameContent reports whether two manifests describe the same blobs.
func sameContent(a, b placement.Manifest) bool {
	return a.Name == b.Name && bytes.Equal(a.Config, b.Config) && a.Arch == b.Arch && a.DType == b.DType && a.Blocks == b.Blocks &&
		a.Tokenizer == b.Tokenizer && a.ChatTemplate == b.ChatTemplate &&
		slices.Equal(a.ExpertsPerBlock, b.ExpertsPerBlock) && slices.Equal(a.Experts, b.Experts) && slices.Equal(a.Dense, b.Dense)
}

// planImport reads the cluster (stores, R, every placement) and assigns each blob of plans its
// stores with routing.Place over all blobs, as the coordinator does. Blobs already placed with the
// same digest keep their placement.
func planImport(ctx context.Context, ps *placement.Store, cl *client.Client, name string, plans []*blobPlan) (map[string]placement.StoreRecord, int, error) {
	r := DefaultConfig().Replicas
	if cc, err := ps.ClusterConfig(ctx); err == nil {
		r = cc.Replicas
	} else if !errors.Is(err, placement.ErrNotFound) {
		return nil, 0, err
	}
	recs, err := ps.Stores(ctx)
	if err != nil {
		return nil, 0, err
	}
	drains, err := ps.Drains(ctx)
	if err != nil {
		return nil, 0, err
	}
	stores := map[string]placement.StoreRecord{}
	var targets []routing.Store
	for _, rec := range recs {
		if (rec.State == placement.StoreAlive || rec.State == placement.StoreSuspect) && !drains[rec.Name] && rec.Capacity > 0 {
			stores[rec.Name] = rec
			targets = append(targets, routing.Store{Name: rec.Name, Capacity: rec.Capacity})
		}
	}
	if len(targets) == 0 {
		return nil, 0, fmt.Errorf("%w: no live store takes blobs (is a coordinator running, and have stores joined it?)", ErrImport)
	}

	// Every blob of the cluster, this model's as they will be.
	mine := map[string]*blobPlan{}
	var items []routing.Item
	for _, p := range plans {
		mine[p.etcdKey] = p
		p.old, p.rev, p.stores, p.inPlace = nil, 0, nil, false
		items = append(items, routing.Item{Key: ItemKey(ps, p.etcdKey), Size: p.size})
	}
	models, err := ps.Models(ctx)
	if err != nil {
		return nil, 0, err
	}
	if !slices.Contains(models, name) {
		models = append(models, name) // an earlier failed import may have left placements
	}
	for _, m := range models {
		exp, revs, _, err := ps.Placements(ctx, m)
		if err != nil {
			return nil, 0, err
		}
		dense, drevs, _, err := ps.DensePlacements(ctx, m)
		if err != nil {
			return nil, 0, err
		}
		visit := func(key string, pl placement.Placement, rev int64) {
			if p, ok := mine[key]; ok {
				p.old, p.rev = &pl, rev
				return
			}
			if m != name {
				items = append(items, routing.Item{Key: ItemKey(ps, key), Size: pl.Size})
			}
		}
		for k, pl := range exp {
			visit(ps.ExpertKey(m, k), pl, revs[k])
		}
		for n, pl := range dense {
			visit(ps.DenseKey(m, n), pl, drevs[n])
		}
	}
	if err := checkInPlace(ctx, cl, plans, recs); err != nil {
		return nil, 0, err
	}
	assign, err := routing.Place(items, targets, r)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %w", ErrImport, err)
	}
	for _, p := range plans {
		p.stores = assign[ItemKey(ps, p.etcdKey)]
	}
	return stores, min(r, len(targets)), nil
}

// upload is pass 2: it rebuilds each blob and puts it on its stores (those that do not have it),
// Parallel blobs at a time.
func upload(ctx context.Context, cl *client.Client, ckpt *model.Checkpoint, opts ImportOptions, plans []*blobPlan,
	stores map[string]placement.StoreRecord, rep *ImportReport) error {
	byKey := map[string]*blobPlan{}
	for _, p := range plans {
		byKey[p.etcdKey] = p
	}
	var mu sync.Mutex
	var done int64
	progress := func(n int64) {
		mu.Lock()
		defer mu.Unlock()
		done += n
		if opts.Progress != nil {
			opts.Progress(done, rep.Bytes)
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.Parallel)
	i := 0
	err := modelblobs.Split(ckpt, opts.Name, opts.MaxDense, func(b modelblobs.Blob) error {
		if i >= len(plans) {
			return fmt.Errorf("%w: the checkpoint changed while it was imported", ErrImport)
		}
		p := plans[i]
		i++
		if b.Digest != p.digest {
			return fmt.Errorf("%w: the checkpoint changed while it was imported (%s)", ErrImport, b)
		}
		if p.inPlace {
			mu.Lock()
			rep.InPlace++
			mu.Unlock()
			progress(p.size)
			return gctx.Err()
		}
		g.Go(func() error {
			for _, s := range p.stores {
				rec := stores[s]
				r := routing.Replica{Store: s, GRPCAddr: rec.GRPCAddr, DataAddr: rec.DataAddr}
				if has, err := cl.Has(gctx, r, p.digest); err == nil && has[0] {
					continue // sends nothing: the store has these bytes already
				}
				_, existed, err := cl.Put(gctx, r, b.Data)
				if err != nil {
					return fmt.Errorf("%w: put %s (%s, %d bytes) on store %s: %w", ErrImport, b, p.digest, p.size, s, err)
				}
				if !existed {
					mu.Lock()
					rep.Uploaded++
					rep.UploadedBytes += p.size
					mu.Unlock()
				}
			}
			progress(p.size)
			return nil
		})
		return gctx.Err()
	})
	if werr := g.Wait(); werr != nil {
		return werr
	}
	return err
}

// checkInPlace marks the plans whose blob is already placed with the same digest and held by at
// least one of its ready replicas' stores (asked with one Has per store): those need no upload. A
// placement whose stores lost the bytes (a store that came back empty) is uploaded again.
func checkInPlace(ctx context.Context, cl *client.Client, plans []*blobPlan, recs []placement.StoreRecord) error {
	addr := map[string]placement.StoreRecord{}
	for _, r := range recs {
		if r.State == placement.StoreAlive || r.State == placement.StoreSuspect {
			addr[r.Name] = r
		}
	}
	ask := map[string][]*blobPlan{} // store → plans to ask it about
	for _, p := range plans {
		if p.old == nil || p.old.Digest != p.digest {
			continue
		}
		for _, s := range p.old.Ready() {
			if _, ok := addr[s]; ok {
				ask[s] = append(ask[s], p)
			}
		}
	}
	for s, ps := range ask {
		rec := addr[s]
		digests := make([]blob.Digest, len(ps))
		for i, p := range ps {
			digests[i] = p.digest
		}
		present, err := cl.Has(ctx, routing.Replica{Store: s, GRPCAddr: rec.GRPCAddr, DataAddr: rec.DataAddr}, digests...)
		if err != nil {
			continue // an unreachable store vouches for nothing
		}
		for i, p := range ps {
			if present[i] {
				p.inPlace = true
			}
		}
	}
	return nil
}
