package bench

import (
	"context"
	"testing"

	"github.com/pregate/pregate/compute"
	"github.com/pregate/pregate/worker"
)

func TestParseGEMVShapes(t *testing.T) {
	tests := []struct {
		give    string
		want    []GEMVShape
		wantErr bool
	}{
		{give: "3072x768:f32", want: []GEMVShape{{N: 3072, K: 768, DType: compute.F32}}},
		{give: "14336x4096:bf16, 8x4:f32", want: []GEMVShape{{N: 14336, K: 4096, DType: compute.BF16}, {N: 8, K: 4, DType: compute.F32}}},
		{give: "3072x768", wantErr: true},
		{give: "3072:f32", wantErr: true},
		{give: "0x768:f32", wantErr: true},
		{give: "3072x768:f16", wantErr: true},
		{give: "", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseGEMVShapes(tt.give)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseGEMVShapes(%q): error %v, want error %v", tt.give, err, tt.wantErr)
			continue
		}
		if len(got) != len(tt.want) {
			t.Errorf("ParseGEMVShapes(%q) = %v, want %v", tt.give, got, tt.want)
			continue
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Errorf("ParseGEMVShapes(%q)[%d] = %v, want %v", tt.give, i, got[i], tt.want[i])
			}
		}
	}
	if s := (GEMVShape{N: 8, K: 4, DType: compute.BF16}); s.String() != "8x4:bf16" || s.Bytes() != 64 {
		t.Errorf("%v: %q, %d bytes", s, s.String(), s.Bytes())
	}
}

// RunDevice on the CPU device: every shape and the copy measured, rates consistent with the sizes.
func TestRunDeviceOnCPU(t *testing.T) {
	cpu := compute.NewCPU(1)
	defer cpu.Close()
	dev := worker.NewCPU()
	defer dev.Close()
	shapes := []GEMVShape{{N: 64, K: 32, DType: compute.F32}, {N: 32, K: 64, DType: compute.BF16}}
	res, err := RunDevice(context.Background(), DeviceOptions{Backend: cpu, Device: dev, Shapes: shapes,
		CopyBytes: 1 << 16, MinSeconds: 0.005, Rounds: 2})
	if err != nil {
		t.Fatal(err)
	}
	if res.Device != dev.Name() || len(res.GEMV) != len(shapes) {
		t.Fatalf("result %+v", res)
	}
	for i, g := range res.GEMV {
		if g.Shape != shapes[i].String() || g.Bytes != shapes[i].Bytes() || g.SecondsPerCall <= 0 ||
			g.BytesPerSecond != float64(g.Bytes)/g.SecondsPerCall {
			t.Errorf("GEMV %d: %+v", i, g)
		}
	}
	if c := res.Copy; c.Bytes != 1<<16 || c.SecondsPerCopy <= 0 || c.BytesPerSecond != float64(c.Bytes)/c.SecondsPerCopy {
		t.Errorf("copy: %+v", c)
	}
	if _, err := RunDevice(context.Background(), DeviceOptions{Backend: cpu, Device: dev}); err == nil {
		t.Error("RunDevice without a copy size: no error")
	}
}
