//go:build e2e

package e2e

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Row is one scenario's line in the results table: its outcome (set when the test ends) and the
// numbers it recorded, in the order recorded.
type Row struct {
	Scenario string
	Result   string // pass, FAIL, skip
	Took     time.Duration
	mu       sync.Mutex
	keys     []string
	vals     map[string]string
}

var results struct {
	sync.Mutex
	rows []*Row
}

// Record adds scenario's row to the table; the test's outcome and duration fill it in at the end.
func Record(t testing.TB, scenario string) *Row {
	r := &Row{Scenario: scenario, vals: map[string]string{}}
	results.Lock()
	results.rows = append(results.rows, r)
	results.Unlock()
	start := time.Now()
	t.Cleanup(func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.Took = time.Since(start).Round(100 * time.Millisecond)
		switch {
		case t.Skipped():
			r.Result = "skip"
		case t.Failed():
			r.Result = "FAIL"
		default:
			r.Result = "pass"
		}
	})
	return r
}

// Set records a number (or a short note) under key; a second Set of key replaces it.
func (r *Row) Set(key string, format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.vals[key]; !ok {
		r.keys = append(r.keys, key)
	}
	r.vals[key] = fmt.Sprintf(format, args...)
}

// line is the row in markdown.
func (r *Row) line() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	parts := make([]string, len(r.keys))
	for i, k := range r.keys {
		parts[i] = k + "=" + r.vals[k]
	}
	res := r.Result
	if res == "" {
		res = "unfinished"
	}
	return fmt.Sprintf("| %s | %s | %v | %s |", r.Scenario, res, r.Took, strings.ReplaceAll(strings.Join(parts, ", "), "|", `\|`))
}

// writeResults writes the table in markdown, by scenario name (a., b., …).
func writeResults(w io.Writer) {
	results.Lock()
	defer results.Unlock()
	fmt.Fprintln(w, "| scenario | result | time | numbers |")
	fmt.Fprintln(w, "|---|---|---|---|")
	rows := slices.Clone(results.rows)
	slices.SortStableFunc(rows, func(a, b *Row) int { return strings.Compare(a.Scenario, b.Scenario) })
	for _, r := range rows {
		fmt.Fprintln(w, r.line())
	}
}
