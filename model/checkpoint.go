package model

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"unsafe"
)

// File names of an HF model directory.
const (
	ConfigFileName      = "config.json"
	SafetensorsFileName = "model.safetensors"
	IndexFileName       = "model.safetensors.index.json"
)

// Checkpoint is an HF model directory: config.json plus model.safetensors, or
// model.safetensors.index.json and the shards it names. Tied weights are resolved as aliases.
// Its read methods are safe for concurrent use; views it returns are valid until Close.
type Checkpoint struct {
	dir     string
	src     string // the directory, or the file for OpenTensorFile; used in errors
	cfg     *Config
	files   []*SafetensorsFile
	where   map[string]*SafetensorsFile // stored tensor → its file
	aliases map[string]string           // alias (not stored) → stored name
	names   []string

	closeOnce sync.Once
	closeErr  error
}

// OpenCheckpoint opens the model directory dir: it loads and validates config.json, then opens
// model.safetensors, or, if that is absent, model.safetensors.index.json and its shards. Every
// shard must exist inside dir, every tensor of the weight_map must be in its shard and every tensor
// of a shard must be in the weight_map.
func OpenCheckpoint(dir string) (*Checkpoint, error) {
	cfg, err := LoadConfig(filepath.Join(dir, ConfigFileName))
	if err != nil {
		return nil, err
	}
	c := &Checkpoint{dir: dir, src: dir, cfg: cfg, where: map[string]*SafetensorsFile{}}
	single := filepath.Join(dir, SafetensorsFileName)
	index := filepath.Join(dir, IndexFileName)
	switch {
	case fileExists(single):
		f, err := OpenSafetensors(single)
		if err != nil {
			return nil, err
		}
		c.addFile(f, nil)
	case fileExists(index):
		if err := c.openShards(index); err != nil {
			_ = c.Close()
			return nil, err
		}
	default:
		return nil, fmt.Errorf("%w: %s: neither %s nor %s exists", ErrCheckpoint, dir, SafetensorsFileName, IndexFileName)
	}
	c.finish()
	return c, nil
}

// OpenTensorFile opens a single safetensors file (e.g. golden.safetensors) as a Checkpoint
// without config: Config returns nil, there are no aliases and Validate fails.
func OpenTensorFile(path string) (*Checkpoint, error) {
	f, err := OpenSafetensors(path)
	if err != nil {
		return nil, err
	}
	c := &Checkpoint{dir: filepath.Dir(path), src: path, where: map[string]*SafetensorsFile{}}
	c.addFile(f, nil)
	c.finish()
	return c, nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func (c *Checkpoint) addFile(f *SafetensorsFile, names []string) {
	c.files = append(c.files, f)
	if names == nil {
		names = f.Names()
	}
	for _, n := range names {
		c.where[n] = f
	}
}

// finish computes the sorted names and the aliases that apply (alias not stored, target stored).
func (c *Checkpoint) finish() {
	c.names = make([]string, 0, len(c.where))
	for n := range c.where {
		c.names = append(c.names, n)
	}
	slices.Sort(c.names)
	c.aliases = map[string]string{}
	for alias, target := range tiedAliases(c.cfg) {
		if _, stored := c.where[alias]; stored {
			continue
		}
		if _, ok := c.where[target]; ok {
			c.aliases[alias] = target
		}
	}
}

type shardIndex struct {
	Metadata  map[string]any    `json:"metadata"`
	WeightMap map[string]string `json:"weight_map"`
}

func (c *Checkpoint) openShards(indexPath string) error {
	data, err := os.ReadFile(indexPath)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrCheckpoint, err)
	}
	var idx shardIndex
	if err := json.Unmarshal(data, &idx); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrCheckpoint, indexPath, err)
	}
	if len(idx.WeightMap) == 0 {
		return fmt.Errorf("%w: %s: weight_map is missing or empty", ErrCheckpoint, indexPath)
	}
	byShard := map[string][]string{}
	for tensor, shard := range idx.WeightMap {
		byShard[shard] = append(byShard[shard], tensor)
	}
	shards := make([]string, 0, len(byShard))
	for s := range byShard {
		if !filepath.IsLocal(s) {
			return fmt.Errorf("%w: %s: shard file %q (for tensor %q) is not a file inside %s",
				ErrCheckpoint, indexPath, s, slices.Min(byShard[s]), c.dir)
		}
		shards = append(shards, s)
	}
	slices.Sort(shards)
	root, err := os.OpenRoot(c.dir)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrCheckpoint, err)
	}
	defer root.Close()
	for _, s := range shards {
		tensors := byShard[s]
		slices.Sort(tensors)
		path := filepath.Join(c.dir, s)
		fd, err := root.Open(s)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("%w: %s: shard %s (for tensor %q) does not exist", ErrCheckpoint, indexPath, path, tensors[0])
			}
			return fmt.Errorf("%w: %s: shard %s: %w", ErrCheckpoint, indexPath, path, err)
		}
		f, err := openSafetensorsFD(fd, path)
		if err != nil {
			return err
		}
		c.files = append(c.files, f)
		for _, t := range tensors {
			if _, ok := f.Info(t); !ok {
				return fmt.Errorf("%w: %s: tensor %q is mapped to %s but is not in it", ErrCheckpoint, indexPath, t, path)
			}
			c.where[t] = f
		}
		for _, t := range f.Names() {
			if idx.WeightMap[t] != s {
				return fmt.Errorf("%w: %s: tensor %q in shard %s is not mapped to it by the weight_map", ErrCheckpoint, indexPath, t, path)
			}
		}
	}
	return nil
}

// Dir returns the model directory (the file's directory for OpenTensorFile).
func (c *Checkpoint) Dir() string { return c.dir }

// Config returns the parsed config, or nil for OpenTensorFile.
func (c *Checkpoint) Config() *Config { return c.cfg }

// Names returns the stored tensor names, sorted (aliases not included).
func (c *Checkpoint) Names() []string { return slices.Clone(c.names) }

// Has reports whether name is stored or is a tied alias of a stored tensor.
func (c *Checkpoint) Has(name string) bool {
	_, _, ok := c.resolve(name)
	return ok
}

func (c *Checkpoint) resolve(name string) (*SafetensorsFile, string, bool) {
	if f, ok := c.where[name]; ok {
		return f, name, true
	}
	if target, ok := c.aliases[name]; ok {
		return c.where[target], target, true
	}
	return nil, "", false
}

// Info describes the tensor; for an alias it describes the stored tensor (Name is the stored name).
func (c *Checkpoint) Info(name string) (TensorInfo, error) {
	f, stored, ok := c.resolve(name)
	if !ok {
		return TensorInfo{}, fmt.Errorf("%w: %q in %s", ErrTensorNotFound, name, c.src)
	}
	info, _ := f.Info(stored)
	return info, nil
}

// Bytes returns the tensor's raw bytes (a read-only view into the mapping) and its description.
func (c *Checkpoint) Bytes(name string) ([]byte, TensorInfo, error) {
	info, err := c.Info(name)
	if err != nil {
		return nil, TensorInfo{}, err
	}
	f, _, _ := c.resolve(name)
	b, err := f.Bytes(info.Name)
	if err != nil {
		return nil, TensorInfo{}, err
	}
	return b, info, nil
}

func checkShape(info TensorInfo, alias string, want []int) error {
	if len(want) == 0 || slices.Equal(info.Shape, want) {
		return nil
	}
	return fmt.Errorf("%w: tensor %q in %s: got shape %v, want %v", ErrShapeMismatch, alias, info.File, info.Shape, want)
}

// Float32 returns the tensor as float32, checking that its shape equals want (when want is given).
// F32 tensors whose data is 4-byte aligned are returned as a zero-copy view into the mapping: it is
// read-only (writing faults) and valid until Close. Other dtypes are converted into a new slice.
func (c *Checkpoint) Float32(name string, want ...int) ([]float32, error) {
	b, info, err := c.Bytes(name)
	if err != nil {
		return nil, err
	}
	if err := checkShape(info, name, want); err != nil {
		return nil, err
	}
	n := info.NumElements()
	if n == 0 {
		return []float32{}, nil
	}
	if info.DType == F32 && hostLittleEndian() && uintptr(unsafe.Pointer(&b[0]))%4 == 0 {
		return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), n), nil
	}
	out := make([]float32, n)
	if err := ToFloat32(out, b, info.DType); err != nil {
		return nil, fmt.Errorf("tensor %q in %s: %w", name, info.File, err)
	}
	return out, nil
}

// Int64 returns an I64 (or I32, widened) tensor as a new []int64, checking its shape against want.
func (c *Checkpoint) Int64(name string, want ...int) ([]int64, error) {
	b, info, err := c.Bytes(name)
	if err != nil {
		return nil, err
	}
	if err := checkShape(info, name, want); err != nil {
		return nil, err
	}
	out := make([]int64, info.NumElements())
	switch info.DType {
	case I64:
		for i := range out {
			out[i] = int64(binary.LittleEndian.Uint64(b[8*i:]))
		}
	case I32:
		for i := range out {
			out[i] = int64(int32(binary.LittleEndian.Uint32(b[4*i:])))
		}
	default:
		return nil, fmt.Errorf("%w: tensor %q in %s is %s, want I64", ErrDType, name, info.File, info.DType)
	}
	return out, nil
}

// HasPreGates reports whether the checkpoint stores any pre-gate tensor (…mlp.pre_gate.weight).
func (c *Checkpoint) HasPreGates() bool {
	for _, n := range c.names {
		if strings.HasSuffix(n, ".mlp.pre_gate.weight") {
			return true
		}
	}
	return false
}

// maxReported bounds the problems Validate lists individually.
const maxReported = 8

// Validate checks the tensors against the config: every tensor the architecture needs is present
// (directly or as a tied alias) with the shape the config implies and a float dtype; optional
// tensors (pre-gates, explicitly stored tied weights) have the right shape when present; and
// nothing else is stored. All problems are reported (the first few individually).
func (c *Checkpoint) Validate() error {
	if c.cfg == nil {
		return fmt.Errorf("%w: %s: no config.json (opened as a tensor file)", ErrConfig, c.src)
	}
	expected, err := ExpectedTensors(c.cfg, false)
	if err != nil {
		return fmt.Errorf("%s: %w", c.src, err)
	}
	var problems []error
	known := map[string]bool{}
	check := func(s TensorSpec, optional bool) {
		known[s.Name] = true
		if optional {
			if _, stored := c.where[s.Name]; !stored {
				return
			}
		}
		info, err := c.Info(s.Name)
		if err != nil {
			problems = append(problems, fmt.Errorf("%w: %s: missing tensor %q (%s)", ErrCheckpoint, c.src, s.Name, c.cfg.ModelType))
			return
		}
		if !slices.Equal(info.Shape, s.Shape) {
			problems = append(problems, fmt.Errorf("%w: tensor %q in %s: got shape %v, want %v from config.json",
				ErrShapeMismatch, s.Name, info.File, info.Shape, s.Shape))
		}
		if !info.DType.IsFloat() {
			problems = append(problems, fmt.Errorf("%w: tensor %q in %s is %s, want a float dtype", ErrDType, s.Name, info.File, info.DType))
		}
	}
	for _, s := range expected {
		check(s, false)
	}
	for _, s := range optionalTensors(c.cfg) {
		check(s, true)
	}
	for _, n := range c.names {
		if !known[n] {
			problems = append(problems, fmt.Errorf("%w: tensor %q in %s is not part of a %s model with this config",
				ErrCheckpoint, n, c.where[n].Path(), c.cfg.ModelType))
		}
	}
	switch {
	case len(problems) == 0:
		return nil
	case len(problems) == 1:
		return problems[0]
	case len(problems) > maxReported:
		rest := len(problems) - maxReported
		problems = append(problems[:maxReported], fmt.Errorf("... and %d more problems", rest))
	}
	return errors.Join(problems...)
}

// Close unmaps every file. It is idempotent.
func (c *Checkpoint) Close() error {
	c.closeOnce.Do(func() {
		var errs []error
		for _, f := range c.files {
			errs = append(errs, f.Close())
		}
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}
