package main

import "testing"

func TestParseDevice(t *testing.T) {
	tests := []struct {
		give    string
		want    deviceSpec
		wantErr bool
	}{
		{give: "cpu", want: deviceSpec{}},
		{give: "cuda", want: deviceSpec{cuda: true}},
		{give: "cuda:0", want: deviceSpec{cuda: true}},
		{give: "cuda:3", want: deviceSpec{cuda: true, ordinal: 3}},
		{give: "cuda:-1", wantErr: true},
		{give: "cuda:", wantErr: true},
		{give: "cuda:x", wantErr: true},
		{give: "gpu", wantErr: true},
		{give: "", wantErr: true},
		{give: "CPU", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseDevice(tt.give)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("parseDevice(%q) = %+v, %v; want %+v, error %v", tt.give, got, err, tt.want, tt.wantErr)
		}
		if err == nil && tt.give != "cuda" {
			if s := got.String(); s != tt.give {
				t.Errorf("parseDevice(%q).String() = %q", tt.give, s)
			}
		}
	}
}
