package worker

import (
	"errors"
	"testing"
)

func TestParseAndCheckMode(t *testing.T) {
	tests := []struct {
		give                   string
		wantErr                bool
		fitsPlain, fitsPreGate bool // CheckMode accepts a checkpoint without / with pre-gates
		speculates             bool
	}{
		{give: "resident", fitsPlain: true, fitsPreGate: true},
		{give: "ondemand", fitsPlain: true, fitsPreGate: true},
		{give: "prefetch-all", fitsPlain: true, fitsPreGate: true},
		{give: "pregated", fitsPreGate: true},
		{give: "speculative", fitsPlain: true, speculates: true},
		{give: "eager", wantErr: true},
		{give: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.give, func(t *testing.T) {
			m, err := ParseMode(tt.give)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseMode(%q): %v, want error %v", tt.give, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if string(m) != tt.give {
				t.Errorf("ParseMode(%q) = %q", tt.give, m)
			}
			for _, c := range []struct {
				preGated, fits bool
			}{{false, tt.fitsPlain}, {true, tt.fitsPreGate}} {
				err := CheckMode(m, c.preGated)
				if (err == nil) != c.fits || (err != nil && !errors.Is(err, ErrModeMismatch)) {
					t.Errorf("CheckMode(%s, pre-gated %v): %v, want fits %v", m, c.preGated, err, c.fits)
				}
			}
			if m.Speculates() != tt.speculates {
				t.Errorf("%s.Speculates() = %v", m, m.Speculates())
			}
		})
	}
}
