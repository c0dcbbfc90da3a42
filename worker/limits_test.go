package worker

import (
	"testing"

	"github.com/pregate/pregate/model"
)

// TestMaxModelLen: every architecture gets a bound; Mixtral's positions cap the configured one.
func TestMaxModelLen(t *testing.T) {
	mixtral := &model.Config{Mixtral: &model.MixtralConfig{MaxPositionEmbeddings: 4096}}
	switchCfg := &model.Config{Switch: &model.SwitchConfig{}}
	tests := []struct {
		name    string
		cfg     *model.Config
		give    int
		want    int
		wantErr bool
	}{
		{"mixtral default", mixtral, 0, 4096, false},
		{"mixtral smaller", mixtral, 1024, 1024, false},
		{"mixtral beyond its positions", mixtral, 8192, 0, true},
		{"switch default", switchCfg, 0, DefaultSwitchMaxModelLen, false},
		{"switch configured", switchCfg, 512, 512, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := maxModelLen(tt.cfg, tt.give)
			if got != tt.want || (err != nil) != tt.wantErr {
				t.Errorf("maxModelLen(%d) = %d, %v; want %d, error %v", tt.give, got, err, tt.want, tt.wantErr)
			}
		})
	}
}
